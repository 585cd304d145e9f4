"""What to keep when completing a digit: one rule for the CLI, the Python API and the page.

A keep mask is given over image pixels ([H, W] or [N, H, W]) or over code positions ([h, w] or [N, h, w]), True
(or 1, or white in a picture) where the image is kept. A pixel mask becomes a code mask by the patches the codes
stand for: a code position is kept only when every pixel of its patch is kept, so erasing any part of a patch
resamples that code (on MNIST each of the 7x7 codes covers a 4x4 pixel patch). Shorthands keep one half of the map:
top, bottom, left, right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import UserError
from .user_arrays import user_tensor

SHORTHANDS = ("top", "bottom", "left", "right")


def region(name: str, grid: tuple[int, int]) -> torch.Tensor:
    """The code mask [h, w] of a shorthand: the top h//2 rows, the bottom h//2, the left w//2 columns or the right."""
    h, w = grid
    keep = torch.zeros(h, w, dtype=torch.bool)
    if name == "top":
        keep[: h // 2] = True
    elif name == "bottom":
        keep[h - h // 2 :] = True
    elif name == "left":
        keep[:, : w // 2] = True
    elif name == "right":
        keep[:, w - w // 2 :] = True
    else:
        raise UserError(f"--keep {name!r}: choose one of {', '.join(SHORTHANDS)}, or give a mask (--keep-mask FILE)")
    return keep


def erase_box(box: str, image_size: tuple[int, int]) -> torch.Tensor:
    """'x0,y0,x1,y1' (pixels, x1/y1 exclusive) -> a pixel keep mask [H, W] that is False inside the box."""
    height, width = image_size
    try:
        x0, y0, x1, y1 = (int(v) for v in box.split(","))
    except ValueError:
        raise UserError(f"--erase {box!r}: give four integers x0,y0,x1,y1 (pixels, e.g. 8,8,20,20)") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise UserError(
            f"--erase {box}: need 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} (the image is {width}x{height})"
        )
    keep = torch.ones(height, width, dtype=torch.bool)
    keep[y0:y1, x0:x1] = False
    return keep


def _binary(mask, what: str) -> torch.Tensor:
    t = user_tensor(mask, what, "True/False (or 0/1) per position").clone()  # never a view of the caller's array
    if t.is_complex():
        raise UserError(f"{what} must be True/False (or 0/1) per position, got {t.dtype}")
    if t.dtype == torch.bool:
        return t
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise UserError(f"{what} has NaN or infinite values; give True/False (or 0/1) per position")
    values = torch.unique(t)
    if t.dtype == torch.uint8 and bool(((values == 0) | (values == 255) | (values == 1)).all()):
        return t > 0
    if not bool(((values == 0) | (values == 1)).all()):
        shown = ", ".join(f"{v:g}" for v in values[:5].double().tolist())
        raise UserError(f"{what} must be binary (True/False or 0/1, or black/white in a picture), it has {shown}...")
    return t > 0


def code_mask(keep, n: int, grid: tuple[int, int], image_size: tuple[int, int], what: str = "the keep mask"):
    """Any accepted form of `keep` -> bool [n, h, w] over code positions (True = kept)."""
    h, w = grid
    if isinstance(keep, str):
        out = region(keep, grid)[None].expand(n, h, w)
    else:
        m = _binary(keep, what)
        if m.dim() == 2:
            m = m[None].expand(n, *m.shape)
        if m.dim() != 3 or len(m) != n:
            raise UserError(
                f"{what} has shape {list(m.shape)}: give [{image_size[0]}, {image_size[1]}] pixels or [{h}, {w}] codes "
                f"(or one per image: [{n}, ...])"
            )
        if tuple(m.shape[1:]) == tuple(image_size):
            erased = F.adaptive_max_pool2d((~m).float()[:, None], (h, w))[:, 0] > 0
            out = ~erased
        elif tuple(m.shape[1:]) == (h, w):
            out = m
        else:
            raise UserError(
                f"{what} is {m.shape[1]}x{m.shape[2]}: it must match the image ({image_size[0]}x{image_size[1]} "
                f"pixels) or the code map ({h}x{w})"
            )
    out = out.clone()
    counts = out.flatten(1).sum(1)
    if bool((counts == 0).any()):
        raise UserError(f"{what} keeps nothing: that is plain generation (vqprior run-stage 4, run.generate)")
    if bool((counts == h * w).all()):
        raise UserError(f"{what} keeps every code position: nothing to complete; erase part of the image")
    return out


def pixel_view(keep: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Code mask [N, h, w] -> pixel mask [N, H, W]: which pixels the kept codes stand for (for pictures)."""
    return F.interpolate(keep.float()[:, None], size=tuple(image_size), mode="nearest")[:, 0] > 0
