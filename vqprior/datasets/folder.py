"""A folder of PNG/JPEG images as a dataset.

Layout: `root/train/...` and `root/test/...` when both exist; otherwise every image under `root`, with
every 10th file (in sorted order) held out as the test split. Inside a split, subfolders are classes
(`root/train/cat/1.png`); images with no subfolder make an unlabeled dataset. A split's images come in an order
that mixes the classes (`_mixed`), so its first N and its last 1/6 hold every class.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import DataSection
from ..errors import UserError
from .imageset import ImageSet
from .pixels import GRAY_MODES, UNREADABLE, open_image, to_uint8, why_unreadable

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
HOLDOUT_EVERY = 10


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")
    )


def _mixed(folder: Path, files: list[Path]) -> list[Path]:
    """The files in a fixed order that mixes the classes: by a hash of each file's path under the folder. Sorted
    order would put whole classes at the end, where the validation slice (the last 1/6) and data.train_limit (the
    first N) cut: a slice of only "two" and "zero" scored the samples of every class against them. The order of a
    file never depends on the others, so adding images keeps the others' order."""
    return sorted(files, key=lambda f: hashlib.sha256(f.relative_to(folder).as_posix().encode()).digest())


def _split_files(root: Path, split: str) -> tuple[Path, list[Path]]:
    if (root / "train").is_dir() and (root / "test").is_dir():
        folder = root / split
        return folder, _mixed(folder, _images_under(folder))
    files = _images_under(root)
    held_out = [f for i, f in enumerate(files) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    kept = [f for i, f in enumerate(files) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    return root, _mixed(root, kept if split == "train" else held_out)


def class_names_of(folder: Path, files: list[Path]) -> list[str] | None:
    """Sorted class-subfolder names, or None when the images sit directly in the folder."""
    depths = {len(f.relative_to(folder).parts) for f in files}
    if depths == {1} or not files:
        return None
    if 1 in depths:
        loose = next(f for f in files if len(f.relative_to(folder).parts) == 1)
        raise UserError(
            f"{folder} mixes loose images ({loose.name}) with class subfolders; put every image in a class folder or none"
        )
    return sorted({f.relative_to(folder).parts[0] for f in files})


def _is_gray(img: Image.Image) -> bool:
    if img.mode == "P":
        palette = np.array(img.convert("RGB"))
        return bool((palette[..., 0] == palette[..., 1]).all() and (palette[..., 1] == palette[..., 2]).all())
    return img.mode in GRAY_MODES


def dataset_channels(root: Path) -> int:
    """1 when every image of the whole dataset (both splits) is grayscale, else 3: decided once for all
    splits, so a colour file in one split cannot give the splits different shapes."""
    gray = True
    for f in _images_under(root):
        try:
            with Image.open(f) as img:
                gray = _is_gray(img)
        except UNREADABLE:
            continue  # the split loader reports unreadable files
        if not gray:
            break
    return 1 if gray else 3


def _fit(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image_folder(cfg: DataSection, split: str) -> ImageSet:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root {root} is not a folder; point it at a folder of images")
    folder, files = _split_files(root, split)
    if not files:
        raise UserError(f"no images (.png/.jpg/...) found for the {split} split under {folder}; check data.root")
    names = class_names_of(folder, files)
    if split == "test" and folder != root:
        train_names = class_names_of(root / "train", _images_under(root / "train"))
        if train_names != names:
            raise UserError(
                f"class folders differ between train ({train_names}) and test ({names}) under {root}; use the same classes in both"
            )

    opened, skipped = [], []
    for f in files:
        try:
            opened.append((f, open_image(f)))
        except UNREADABLE as e:
            if cfg.strict:
                raise UserError(
                    f"cannot read image {f} ({why_unreadable(e)}); fix or remove it, or set data.strict=false to skip it"
                ) from None
            skipped.append(f)
    if not opened:
        raise UserError(f"none of the {len(files)} files in the {split} split under {folder} is a readable image")

    channels = cfg.channels or dataset_channels(root)
    arrays, labels = [], []
    first_size = None
    notices: Counter[str] = Counter()
    for f, img in opened:
        try:
            pixels, notice = to_uint8(img, channels)  # 16-bit and float images scaled by their range, not clipped
        except ValueError as e:
            raise UserError(f"cannot use image {f}: {e}; fix or remove it") from None
        if notice:
            notices[notice] += 1
        img = Image.fromarray(pixels)
        if cfg.image_size:
            img = _fit(img, cfg.image_size)
        elif first_size is None:
            first_size = (img.size, f)
        elif img.size != first_size[0]:
            raise UserError(
                f"images differ in size ({first_size[1].name} is {first_size[0][0]}x{first_size[0][1]}, {f.name} is "
                f"{img.size[0]}x{img.size[1]}); set data.image_size to resize them all"
            )
        a = np.asarray(img, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        if names:
            labels.append(names.index(f.relative_to(folder).parts[0]))
    images = torch.from_numpy(np.stack(arrays))
    return ImageSet(
        images,
        torch.tensor(labels, dtype=torch.int64) if names else None,
        names,
        skipped=len(skipped),
        notices=[f"{text} ({count} of {len(opened)} in the {split} split)" for text, count in notices.items()],
    )
