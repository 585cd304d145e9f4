"""Classifier-free guidance values: one scale for every position, or a ramp over the raster positions.

A guidance value is a number s (each code is drawn from uncond + s * (cond - uncond)) or a pair (first, last): the
scale then moves linearly from `first` at the first raster position to `last` at the last one. Config files and
JSON write a ramp as a list `[1.25, 2.0]`, the command line as `1.25:2`. Pure Python: config, samplers, CLI, eval
and the page all read guidance through here.
"""

from __future__ import annotations

import math
import numbers

MAX_GUIDANCE = 100.0

Guidance = float | tuple[float, float]


def check(value) -> Guidance:
    """The value as a float or a (first, last) tuple of floats, each finite and in 0..100; ValueError otherwise."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or isinstance(value[0], (list, tuple)) or isinstance(value[1], (list, tuple)):
            raise ValueError(f"guidance must be a number or a pair [first, last], got {list(value)!r}")
        return (check(value[0]), check(value[1]))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"guidance must be a number or a pair [first, last], got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0 <= value <= MAX_GUIDANCE):
        raise ValueError(f"guidance must be a finite number in 0..{MAX_GUIDANCE:g}, got {value:g}")
    return value


def ends(value: Guidance) -> tuple[float, float]:
    """(scale at the first position, scale at the last)."""
    return (value[0], value[1]) if isinstance(value, (list, tuple)) else (value, value)


def is_constant(value: Guidance) -> bool:
    first, last = ends(value)
    return first == last


def is_plain(value: Guidance) -> bool:
    """Scale 1 everywhere: plain conditional sampling, no unconditional pass needed."""
    return ends(value) == (1.0, 1.0)


def scale_at(value: Guidance, position: int, positions: int) -> float:
    """The scale at raster position `position` of `positions`."""
    first, last = ends(value)
    if first == last or positions <= 1:
        return first
    return first + (last - first) * position / (positions - 1)


def scales(value: Guidance, positions: int) -> list[float]:
    return [scale_at(value, p, positions) for p in range(positions)]


def label(value: Guidance) -> str:
    """`1.5`, or `1.25:2` for a ramp (what the command line takes back)."""
    first, last = ends(value)
    return f"{first:g}" if first == last else f"{first:g}:{last:g}"


def read_label(value) -> str | None:
    """A guidance value read back from JSON (an evaluation, a saved config) as its label; None when unreadable."""
    try:
        return label(check(value))
    except ValueError:
        return None


def parse(text: str) -> Guidance:
    """A command-line value: `1.5` or `first:last`; ValueError with the expected form otherwise."""
    parts = str(text).split(":")
    if len(parts) > 2:
        raise ValueError(f"--guidance takes a number or first:last (e.g. 1.25:2), got {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--guidance takes a number or first:last (e.g. 1.25:2), got {text!r}") from None
    return check(values[0] if len(values) == 1 else tuple(values))


def to_json(value: Guidance) -> float | list[float]:
    first, last = ends(value)
    return first if isinstance(value, (int, float)) else [first, last]
