"""A value a user passes as an array (images, codes, labels, a mask) as a CPU tensor, or one line saying what it
must be: a tensor on the meta device (shapes, no values), a ragged list, an array of objects or strings and a
non-array are refused here, so every caller sees only real numbers on the CPU."""

from __future__ import annotations

import numpy as np
import torch

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
