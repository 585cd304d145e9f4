"""Images given to complete / score / classify: files, a folder, an .npz, or a split of the run's own data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import DataSection
from .datasets import load_split
from .datasets.folder import EXTENSIONS
from .datasets.pixels import read_image
from .errors import UserError


def read_inputs(paths: list[str], from_split: str | None, n: int, image_shape: tuple[int, int, int],
                data: dict, notices: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """(uint8 images [N, C, H, W], labels or None, one name per image). Images of any mode are scaled by their
    range (16-bit, float); where the range had to be guessed a line is added to `notices`."""
    notices = [] if notices is None else notices
    if from_split:
        if paths:
            raise UserError("give input files or --from, not both")
        if from_split not in ("train", "test"):
            raise UserError(f"--from {from_split!r}: choose train or test")
        split = load_split(DataSection.model_validate(data), from_split)
        n = min(n, len(split))
        return split.images[:n], None if split.labels is None else split.labels[:n], [f"{from_split}[{i}]" for i in range(n)]
    if not paths:
        raise UserError("no input: give image files, a folder, an .npz, or --from test")
    images, names = [], []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"input {path} does not exist")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
            if not files:
                raise UserError(f"no images (.png/.jpg/...) in {path}")
            for f in files:
                images.append(_read_image(f, image_shape, notices))
                names.append(str(f))
        elif path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as npz:
                    if "images" not in npz:
                        raise UserError(f"{path} has no 'images' array (it has {', '.join(npz.files)})")
                    arr = torch.from_numpy(npz["images"])
            except (ValueError, OSError) as e:
                raise UserError(f"{path} is not a readable .npz ({e})") from None
            if arr.dim() == 3:
                arr = arr.unsqueeze(1)
            if arr.dim() != 4 or tuple(arr.shape[1:]) != tuple(image_shape):
                raise UserError(f"{path}: images are {list(arr.shape)}, this run needs [N, {', '.join(map(str, image_shape))}]")
            if arr.dtype != torch.uint8:
                arr = _float_images(arr, path)
            images.extend(arr)
            names.extend(f"{path}[{i}]" for i in range(len(arr)))
        else:
            images.append(_read_image(path, image_shape, notices))
            names.append(str(path))
    return torch.stack(images), None, names


def _float_images(arr: torch.Tensor, path: Path) -> torch.Tensor:
    """Float (or wider integer) images from an .npz: floats in [0, 1], integers in 0..255; anything else is refused."""
    x = arr.double()
    if not torch.isfinite(x).all():
        raise UserError(f"{path}: images contain NaN or infinite values")
    lo, hi = (x.min().item(), x.max().item()) if x.numel() else (0.0, 0.0)
    if arr.is_floating_point() and lo >= 0 and hi <= 1:
        return x.mul(255).round().to(torch.uint8)
    if not arr.is_floating_point() and lo >= 0 and hi <= 255:
        return x.to(torch.uint8)
    raise UserError(f"{path}: {arr.dtype} images must be floats in [0, 1] or integers in 0..255, got {lo:g}..{hi:g}")


def _read_image(path: Path, image_shape: tuple[int, int, int], notices: list[str]) -> torch.Tensor:
    c, h, w = image_shape
    a, notice = read_image(path, c)
    if a.shape[:2] != (h, w):
        raise UserError(f"{path} is {a.shape[1]}x{a.shape[0]} but this run's images are {w}x{h}; resize it first")
    if notice and notice not in notices:
        notices.append(notice)
    return torch.from_numpy(a[None].copy() if a.ndim == 2 else a.transpose(2, 0, 1).copy())
