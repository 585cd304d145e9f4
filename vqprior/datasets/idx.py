"""torchvision-format MNIST and Fashion-MNIST already on disk (IDX files, gzipped or not)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .imageset import ImageSet

_IDX_FOLDERS = {"mnist-raw": "MNIST", "fashion-mnist": "FashionMNIST"}
_FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the raw MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file; expected the raw MNIST format")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: header says {dims}, file has {body.size} values")
    return body.reshape(dims)


def load_idx_dataset(root: Path, source: str, split: str) -> ImageSet:
    prefix = "train" if split == "train" else "t10k"
    candidates = [root / _IDX_FOLDERS[source] / "raw", root / "raw", root]
    for folder in candidates:
        found = {}
        for kind, stem in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    found[kind] = folder / name
                    break
        if len(found) == 2:
            images = read_idx(found["images"])
            labels = read_idx(found["labels"]).astype(np.int64)
            if len(images) != len(labels):
                raise UserError(
                    f"{found['images']} has {len(images)} images but {found['labels']} has {len(labels)} labels"
                )
            names = _FASHION_CLASSES if source == "fashion-mnist" else [str(d) for d in range(10)]
            return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels), names)
    raise UserError(
        f"no {prefix}-images-idx3-ubyte[.gz] / {prefix}-labels-idx1-ubyte[.gz] under {root} "
        f"(looked in {', '.join(str(c) for c in candidates)}); point data.root at the torchvision dataset folder"
    )
