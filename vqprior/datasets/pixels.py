"""Any image Pillow can open -> uint8 pixels, scaled by the range of its mode (not clipped).

8-bit modes convert as Pillow does. 16-bit modes (I;16*) are scaled by 65535. 32-bit integer (I) and float (F)
images have no range in the file, so it is read from the values: integers within 0..255 as 8-bit and within
0..65535 as 16-bit, floats within [0, 1] as [0, 1] and within [0, 255] as 8-bit, anything else stretched from its
own minimum to maximum; each guess comes back as a notice for the user. Images whose header declares more
pixels than Pillow's decompression-bomb limit are refused before they are decoded.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
GRAY_MODES = {"1", "L", "LA", "La", "I", "F"} | SIXTEEN_BIT  # palette images (P) are checked pixel by pixel
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning)


MAX_PIXELS = 4096 * 4096  # pixels of one input image: a digit needs far fewer, and decoding more costs gigabytes


def open_image(path) -> Image.Image:
    """The decoded image at `path` (or in a file object), turned upright by its EXIF orientation; raises one of
    UNREADABLE for a file that is not an image, is not a regular file (a FIFO is never waited on), or declares more
    than MAX_PIXELS pixels (refused before it is decoded)."""
    if isinstance(path, (str, Path)) and not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError("not a regular file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, do not allocate gigabytes
        with Image.open(path) as img:
            if img.size[0] * img.size[1] > MAX_PIXELS:
                raise ValueError(
                    f"it is {img.size[0]}x{img.size[1]} pixels, more than the {MAX_PIXELS:,} an input may have; "
                    f"scale it down first"
                )
            img.load()
            upright = ImageOps.exif_transpose(img)
            return upright if upright is not img else img.copy()


def why_unreadable(e: BaseException) -> str:
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"its header declares too many pixels (over {Image.MAX_IMAGE_PIXELS:,}; a decompression bomb?)"
    return f"{type(e).__name__}: {e}" if type(e) is ValueError else type(e).__name__


def to_uint8(img: Image.Image, channels: int) -> tuple[np.ndarray, str | None]:
    """(uint8 [H, W] for channels=1 or [H, W, 3] for 3, a notice when the value range had to be guessed or None)."""
    notice = None
    if img.mode in SIXTEEN_BIT or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("the image has NaN or infinite pixels")
        scale, notice = _range(
            img.mode, float(values.min()) if values.size else 0.0, float(values.max()) if values.size else 0.0
        )
        lo, hi = scale
        gray = np.rint((values - lo) / (hi - lo) * 255).clip(0, 255).astype(np.uint8)
        return (gray if channels == 1 else np.repeat(gray[..., None], 3, axis=2)), notice
    return np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8), notice


def _range(mode: str, lo: float, hi: float) -> tuple[tuple[float, float], str | None]:
    if mode in SIXTEEN_BIT:
        return (0.0, 65535.0), None
    if mode == "I":
        if lo >= 0 and hi <= 255:
            return (0.0, 255.0), "32-bit integer images with values in 0..255 were read as 8-bit"
        if lo >= 0 and hi <= 65535:
            return (
                0.0,
                65535.0,
            ), "32-bit integer images with values in 0..65535 were read as 16-bit (scaled by 255/65535)"
    elif lo >= 0 and hi <= 1:
        return (0.0, 1.0), "float images with values in [0, 1] were read as 0 = black, 1 = white"
    elif lo >= 0 and hi <= 255:
        return (0.0, 255.0), "float images with values in [0, 255] were read as 8-bit"
    what = "float" if mode == "F" else "32-bit integer"
    return (
        lo,
        hi if hi > lo else lo + 1,
    ), f"{what} images outside the usual ranges were stretched from their own minimum to maximum"


def fit_to(pixels: np.ndarray, height: int, width: int) -> tuple[np.ndarray, str | None]:
    """uint8 pixels [H, W] or [H, W, 3] at the run's size: the one rule of `score`/`complete`/`classify` and the page.
    Another size is scaled (bicubic) so its short side fits and centre-cropped (square runs), or scaled to the
    size; the notice says so."""
    if pixels.shape[:2] == (height, width):
        return pixels, None
    img = Image.fromarray(pixels)
    if height == width:
        w, h = img.size
        scale = height / min(w, h)
        img = img.resize((max(height, round(w * scale)), max(height, round(h * scale))), Image.BICUBIC)
        left, top = (img.size[0] - height) // 2, (img.size[1] - height) // 2
        img = img.crop((left, top, left + height, top + height))
    else:
        img = img.resize((width, height), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8), f"resized to {width}x{height}"


def read_image(path: Path, channels: int) -> tuple[np.ndarray, str | None]:
    """uint8 pixels of one file as for a dataset of `channels` channels, or a one-line UserError."""
    try:
        return to_uint8(open_image(path), channels)
    except UNREADABLE as e:
        raise UserError(f"cannot read {path} as an image: {why_unreadable(e)}") from None
