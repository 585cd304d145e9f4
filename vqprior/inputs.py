"""Images given to complete / score / classify: files, a folder, an .npz, or a split of the run's own data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .config import DataSection
from .datasets import load_split
from .datasets.folder import EXTENSIONS
from .errors import UserError


def read_inputs(paths: list[str], from_split: str | None, n: int, image_shape: tuple[int, int, int],
                data: dict) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """(uint8 images [N, C, H, W], labels or None, one name per image)."""
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
                images.append(_read_image(f, image_shape))
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
                arr = arr.float().clamp(0, 1).mul(255).round().to(torch.uint8)
            images.extend(arr)
            names.extend(f"{path}[{i}]" for i in range(len(arr)))
        else:
            images.append(_read_image(path, image_shape))
            names.append(str(path))
    return torch.stack(images), None, names


def _read_image(path: Path, image_shape: tuple[int, int, int]) -> torch.Tensor:
    c, h, w = image_shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                raise UserError(f"{path} is {img.size[0]}x{img.size[1]} but this run's images are {w}x{h}; resize it first")
            a = np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError):
        raise UserError(f"cannot read {path} as an image") from None
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())
