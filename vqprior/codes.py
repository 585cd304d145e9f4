"""Stage 2's artifact format: code maps [N, H, W] in the smallest unsigned dtype for K, plus int64 labels.

`<run>/stage2/{train,test}_codes.npy` (open with np.load(..., mmap_mode="r")) and `{split}_labels.npy`;
the manifest holds K, grid, dtype, counts and class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import UserError
from .run_folder import MANIFEST


class SplitInfo(BaseModel):
    count: int = Field(ge=0)
    labeled: bool


class CodesManifest(BaseModel):
    """What stage 2's manifest must say about its code maps (a hand-edited or forged one is checked, not trusted)."""

    model_config = ConfigDict(extra="allow")
    codebook_size: int = Field(ge=2, le=2**32)
    grid: tuple[int, int]
    dtype: Literal["uint8", "uint16", "uint32"]
    splits: dict[str, SplitInfo]
    class_names: list[str] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "CodesManifest":
        if min(self.grid) < 1:
            raise ValueError(f"grid {list(self.grid)} must be positive")
        if code_dtype(self.codebook_size).name != self.dtype:
            raise ValueError(f"dtype {self.dtype} does not match K={self.codebook_size}")
        if any(info.labeled for info in self.splits.values()) and not self.class_names:
            raise ValueError("labeled splits need class_names")
        return self


def codes_manifest(manifest: dict, where: Path) -> CodesManifest:
    try:
        return CodesManifest.model_validate(manifest)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise UserError(f"{Path(where) / MANIFEST}: {key}: {first['msg']}; run `vqprior run-stage 2` again") from None


def code_dtype(codebook_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds codes 0..K-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(codebook_size)


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
    info_all = codes_manifest(manifest, folder)
    if split not in info_all.splits:
        raise UserError(f"{Path(folder) / MANIFEST} has no {split!r} split; run `vqprior run-stage 2` again")
    path = Path(folder) / f"{split}_codes.npy"
    try:
        codes = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"missing {path}; run `vqprior run-stage 2` again") from None
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable .npy file ({e}); run `vqprior run-stage 2` again") from None
    k, grid, info = info_all.codebook_size, tuple(info_all.grid), info_all.splits[split]
    expected = (info.count, *grid)
    if codes.shape != expected or codes.dtype.name != info_all.dtype:
        raise UserError(
            f"{path} holds {codes.dtype.name} {list(codes.shape)} but the stage-2 manifest says "
            f"{info_all.dtype} {list(expected)}; run `vqprior run-stage 2` again"
        )
    if codes.size and int(codes.max()) >= k:
        raise UserError(f"{path} has code {int(codes.max())} but K={k}; run `vqprior run-stage 2` again")
    labels = None
    if info.labeled:
        label_path = Path(folder) / f"{split}_labels.npy"
        try:
            labels = np.load(label_path, allow_pickle=False)
        except FileNotFoundError:
            raise UserError(f"missing {label_path}; run `vqprior run-stage 2` again") from None
        except (ValueError, OSError) as e:
            raise UserError(
                f"{label_path} is not a readable .npy file ({e}); run `vqprior run-stage 2` again"
            ) from None
        if labels.shape != (info.count,) or labels.dtype.kind not in "iu":
            raise UserError(
                f"{label_path} holds {labels.dtype} {list(labels.shape)}, expected integer labels [{info.count}]; "
                f"run `vqprior run-stage 2` again"
            )
        classes = len(info_all.class_names)
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise UserError(
                f"{label_path} has labels {int(labels.min())}..{int(labels.max())} but the stage-2 manifest names "
                f"{classes} classes; run `vqprior run-stage 2` again"
            )
    return CodeMaps(codes, labels)
