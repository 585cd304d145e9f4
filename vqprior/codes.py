"""Stage 2's artifact format: code maps [N, H, W] in the smallest unsigned dtype for K, plus int64 labels.

`<run>/stage2/{train,test}_codes.npy` (open with np.load(..., mmap_mode="r")) and `{split}_labels.npy`;
the manifest holds K, grid, dtype, counts and class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError


def code_dtype(codebook_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds codes 0..K-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(codebook_size)


def code_files(split: str, labeled: bool) -> list[str]:
    return [f"{split}_codes.npy"] + ([f"{split}_labels.npy"] if labeled else [])

@dataclass
class CodeMaps:
    codes: np.ndarray  # [N, H, W], smallest unsigned dtype for K, memory-mapped
    labels: np.ndarray | None  # int64 [N]

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """Codes as int64 [N, H, W] and labels int64 [N] (or None) on `device`."""
        codes = torch.from_numpy(np.asarray(self.codes).astype(np.int64)).to(device)
        labels = None if self.labels is None else torch.from_numpy(np.asarray(self.labels)).to(device)
        return codes, labels


def load_code_maps(folder: Path, manifest: dict, split: str) -> CodeMaps:
    """Open stage 2's code maps for a split and check them against its manifest (K, grid, dtype, count)."""
    path = Path(folder) / f"{split}_codes.npy"
    try:
        codes = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"missing {path}; run `vqprior run-stage 2` again") from None
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable .npy file ({e}); run `vqprior run-stage 2` again") from None
    k, grid, info = manifest["codebook_size"], tuple(manifest["grid"]), manifest["splits"][split]
    expected = (info["count"], *grid)
    if codes.shape != expected or codes.dtype.name != manifest["dtype"]:
        raise UserError(f"{path} holds {codes.dtype.name} {list(codes.shape)} but the stage-2 manifest says "
                        f"{manifest['dtype']} {list(expected)}; run `vqprior run-stage 2` again")
    if codes.size and int(codes.max()) >= k:
        raise UserError(f"{path} has code {int(codes.max())} but K={k}; run `vqprior run-stage 2` again")
    labels = None
    if info["labeled"]:
        labels = np.load(Path(folder) / f"{split}_labels.npy", allow_pickle=False)
        if labels.shape != (info["count"],):
            raise UserError(f"{split}_labels.npy has shape {list(labels.shape)}, expected [{info['count']}]; run `vqprior run-stage 2` again")
    return CodeMaps(codes, labels)
