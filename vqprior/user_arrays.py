"""A value a user passes as an array (images, codes, labels, a mask) as a CPU tensor, or one line saying what it
must be: a tensor on the meta device (shapes, no values), a ragged list, an array of objects or strings and a
non-array are refused here, so every caller sees only real numbers on the CPU. Then the API's images, code maps and labels, each checked
against what the run expects."""

from __future__ import annotations

import numpy as np
import torch

from .class_names import resolve_all
from .errors import UserError


def user_tensor(value, what: str, form: str) -> torch.Tensor:
    """`value` as a CPU tensor; otherwise a UserError: '<what> must be <form>, got ...'."""
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            raise UserError(f"{what} is on the meta device (a shape without values); pass it on the CPU or a GPU")
        return value.detach().cpu()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as e:  # a ragged list, an object that refuses conversion
        raise UserError(f"{what} must be {form}, got {type(value).__name__} ({str(e).splitlines()[0][:80]})") from None
    if array.dtype == object or array.dtype.kind in "USVMm":
        raise UserError(f"{what} must be {form}, got an array of {array.dtype} values")
    if not array.flags.writeable:  # a read-only buffer (a decoded upload, a memory map): torch wants its own copy
        array = array.copy()
    try:
        return torch.as_tensor(array)
    except (TypeError, ValueError, RuntimeError) as e:  # dtypes torch has no tensor for (uint32 on old torch, ...)
        raise UserError(f"{what} must be {form}, got {array.dtype} ({str(e).splitlines()[0][:80]})") from None


def user_images(images, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 [N, C, H, W] from a tensor or array (uint8, or floats in [0, 1]) of a run's image shape."""
    x = user_tensor(images, "images", f"a tensor or array [N, {', '.join(map(str, image_shape))}]")
    if x.dim() == 3 and image_shape[0] == 1:
        x = x.unsqueeze(1)
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape) or len(x) == 0:
        raise UserError(
            f"images must be [N >= 1, {', '.join(map(str, image_shape))}] for this run, got {list(x.shape)}"
        )
    if x.dtype != torch.uint8 and not x.is_floating_point() and x.dtype != torch.bool and not x.is_complex():
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > 255):
            raise UserError(
                f"integer images must be in 0..255, got {int(x.min())}..{int(x.max())} (or pass floats in [0, 1])"
            )
        x = x.to(torch.uint8)
    if x.dtype != torch.uint8:
        if x.dtype == torch.bool or x.is_complex():
            raise UserError(f"images must be uint8 (0..255), integers in 0..255 or floats in [0, 1], got {x.dtype}")
        x = x.double()
        if not torch.isfinite(x).all():
            raise UserError("images contain NaN or infinite values")
        if x.min() < 0 or x.max() > 1:
            raise UserError(
                f"float images must be in [0, 1], got {x.min().item():g}..{x.max().item():g} (uint8 images are read as 0..255)"
            )
        x = x.mul(255).round().to(torch.uint8)
    return x


def user_codes(codes, grid: tuple[int, int], k: int) -> torch.Tensor:
    """Code maps as long [N, h, w], checked against a run's grid and codebook size K."""
    t = user_tensor(codes, "codes", f"integers [N, {grid[0]}, {grid[1]}]")
    if (
        t.is_floating_point()
        or t.is_complex()
        or t.dtype == torch.bool
        or t.dim() != 3
        or tuple(t.shape[1:]) != tuple(grid)
        or len(t) == 0
    ):
        raise UserError(f"codes must be integers [N >= 1, {grid[0]}, {grid[1]}], got {t.dtype} {list(t.shape)}")
    t = t.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
        raise UserError(f"codes must be in 0..{k - 1} (K={k}), got {int(t.min())}..{int(t.max())}")
    return t


def user_labels(labels, num_classes: int, class_names: list[str] | None) -> torch.Tensor:
    """Classes (names or indices) as long [N], or soft class weights as float64 [N, num_classes]."""
    if labels is None:
        raise UserError(
            f"this run's prior is class-conditional: pass labels (classes 0..{num_classes - 1}, or soft weights)"
        )
    if isinstance(labels, str):
        labels = [labels]
    if isinstance(labels, (list, tuple)) and any(isinstance(c, str) for c in labels):
        labels = resolve_all(labels, class_names, "label")  # names ("seven") or indices
    t = user_tensor(labels, "labels", f"a list of classes or soft weights [N, {num_classes}]")
    if t.numel() == 0:
        raise UserError(
            f"labels must be a non-empty list of classes 0..{num_classes - 1} (or soft weights [N, {num_classes}])"
        )
    if t.is_floating_point():
        t = t.double()
        if t.dim() != 2 or t.shape[1] != num_classes or not len(t):
            raise UserError(f"soft labels must be weights [N, {num_classes}], got shape {list(t.shape)}")
        if not torch.isfinite(t).all() or (t < 0).any() or ((t.sum(1) - 1).abs() > 1e-6).any():
            raise UserError("soft labels must be finite weights >= 0 that sum to 1 in every row")
        return t
    if t.dim() != 1 or not len(t) or t.dtype == torch.bool or t.is_complex():
        raise UserError(f"labels must be a non-empty list of classes 0..{num_classes - 1}, got shape {list(t.shape)}")
    t = t.long()
    if int(t.min()) < 0 or int(t.max()) >= num_classes:
        raise UserError(f"labels must be classes 0..{num_classes - 1}, got {t.tolist()}")
    return t
