"""Images given to complete / score / classify: files, a folder, an .npz, or a split of the run's own data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import DataSection
from .datasets import load_split
from .datasets.folder import EXTENSIONS
from .datasets.pixels import fit_to, read_image
from .errors import UserError


def read_inputs(
    paths: list[str],
    from_split: str | None,
    n: int,
    image_shape: tuple[int, int, int],
    data,
    notices: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """(uint8 images [N, C, H, W], labels or None, one name per image). Images of any mode are scaled by their
    range (16-bit, float); where the range had to be guessed a line is added to `notices`."""
    notices = [] if notices is None else notices
    if from_split:
        if paths:
            raise UserError("give input files or --from, not both")
        if from_split not in ("train", "test"):
            raise UserError(f"--from {from_split!r}: choose train or test")
        split = load_split(
            data() if callable(data) else DataSection.model_validate(data), from_split
        )  # data: the run's section, or a function giving it
        n = min(n, len(split))
        return (
            split.images[:n],
            None if split.labels is None else split.labels[:n],
            [f"{from_split}[{i}]" for i in range(n)],
        )
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
            arr = _npz_images(path, image_shape)
            images.extend(arr)
            names.extend(f"{path}[{i}]" for i in range(len(arr)))
        else:
            images.append(_read_image(path, image_shape, notices))
            names.append(str(path))
    return torch.stack(images), None, names


def _npz_images(path: Path, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 [N, C, H, W] from an .npz's 'images' array: uint8, integers in 0..255 or floats in [0, 1]; any other
    dtype (bool, complex, strings, dates, records, objects), no images, or a broken file is one line."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz:
                raise UserError(f"{path} has no 'images' array (it has {', '.join(npz.files) or 'nothing'})")
            a = npz["images"]
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken zip, a pickled array, a bad header: all the file's fault
        raise UserError(f"{path} is not a readable .npz of arrays ({type(e).__name__}: {e})") from None
    if a.dtype.kind not in "uif":
        raise UserError(f"{path}: images are {a.dtype}; they must be uint8, integers in 0..255 or floats in [0, 1]")
    if a.dtype != np.uint8:
        wide = a.astype(np.float64)
        lo, hi = (float(wide.min()), float(wide.max())) if wide.size else (0.0, 0.0)
        if not np.isfinite(wide).all():
            raise UserError(f"{path}: images contain NaN or infinite values")
        if a.dtype.kind == "f" and lo >= 0 and hi <= 1:
            a = np.rint(wide * 255).astype(np.uint8)
        elif a.dtype.kind in "ui" and lo >= 0 and hi <= 255:
            a = wide.astype(np.uint8)
        else:
            raise UserError(
                f"{path}: {a.dtype} images must be floats in [0, 1] or integers in 0..255, got {lo:g}..{hi:g}"
            )
    arr = torch.from_numpy(np.ascontiguousarray(a))
    if arr.dim() == 3:
        arr = arr.unsqueeze(1)
    if arr.dim() != 4 or tuple(arr.shape[1:]) != tuple(image_shape) or len(arr) == 0:
        raise UserError(
            f"{path}: images are {list(arr.shape)}, this run needs [N >= 1, {', '.join(map(str, image_shape))}]"
        )
    return arr


def _read_image(path: Path, image_shape: tuple[int, int, int], notices: list[str]) -> torch.Tensor:
    c, h, w = image_shape
    a, notice = read_image(path, c)
    a, resized = fit_to(a, h, w)  # the page's rule: scaled and centre-cropped to the run's size, and said so
    for line in (notice, resized and f"images of another size were {resized} (scaled, centre-cropped)"):
        if line and line not in notices:
            notices.append(line)
    return torch.from_numpy(a[None].copy() if a.ndim == 2 else a.transpose(2, 0, 1).copy())
