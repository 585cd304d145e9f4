"""Sheets of images as PNG bytes: a grid with, when given, each row's caption (its class name) on the left."""

from __future__ import annotations

import io

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

PAD = 2
GREY = 128  # the gaps between images (the same 0.5 grey as every sheet of the project)


def labelled_sheet(images: torch.Tensor, per_row: int, captions: list[str] | None = None, scale: int = 1) -> bytes:
    """uint8 images [N, C, H, W] in rows of `per_row`, as PNG bytes; `captions` (one per row) are written in a
    column to the left of the rows, so a sheet says which class each row is (index order is not name order)."""
    per_row = max(1, min(per_row, len(images))) if len(images) else 1
    grid = make_grid(images.float() / 255, nrow=per_row, padding=PAD, pad_value=GREY / 255)
    picture = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).squeeze(-1).numpy())
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    if captions:
        picture = _with_captions(picture.convert("RGB"), captions, images.shape[2] * scale + PAD * scale)
    buffer = io.BytesIO()
    picture.save(buffer, format="png")
    return buffer.getvalue()


def _with_captions(picture: Image.Image, captions: list[str], row_height: int) -> Image.Image:
    size = max(10, min(16, row_height // 2))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(picture)
    width = max(int(draw.textlength(c, font=font)) for c in captions) + 8
    out = Image.new("RGB", (picture.width + width, picture.height), (GREY, GREY, GREY))
    out.paste(picture, (width, 0))
    draw = ImageDraw.Draw(out)
    for row, caption in enumerate(captions):
        middle = PAD + row * row_height + (row_height - PAD) // 2
        draw.text((width - 4, middle), caption, fill=(255, 255, 255), font=font, anchor="rm")
    return out
