"""CIFAR-10 from its binary release (the pickled python release is refused: nothing else is unpickled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .imageset import ImageSet

CIFAR_RECORD = 1 + 3 * 32 * 32


def load_cifar10_binary(root: Path, split: str) -> ImageSet:
    """CIFAR-10's binary release: records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32)."""
    folder = next((f for f in (root / "cifar-10-batches-bin", root) if (f / "test_batch.bin").is_file()), None)
    if folder is None:
        if (root / "cifar-10-batches-py").is_dir():
            raise UserError(
                f"{root} holds the pickled (python) CIFAR-10, which vqprior does not unpickle; "
                "use the binary version (cifar-10-binary.tar.gz -> cifar-10-batches-bin)"
            )
        raise UserError(
            f"no cifar-10-batches-bin/test_batch.bin under {root}; point data.root at the extracted binary CIFAR-10"
        )
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    chunks = []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise UserError(f"missing {path}; re-extract the binary CIFAR-10")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % CIFAR_RECORD:
            raise UserError(
                f"{path} is truncated ({raw.size} bytes is not a whole number of {CIFAR_RECORD}-byte records)"
            )
        chunks.append(raw.reshape(-1, CIFAR_RECORD))
    records = np.concatenate(chunks)
    meta = folder / "batches.meta.txt"
    classes = (
        [line.strip() for line in meta.read_text().splitlines() if line.strip()]
        if meta.is_file()
        else [str(i) for i in range(10)]
    )
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
    return ImageSet(images, torch.from_numpy(records[:, 0].astype(np.int64)), classes)
