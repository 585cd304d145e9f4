"""Helpers shared by the bench scripts: thread pinning and a timer."""

from __future__ import annotations

import time

import torch


def pin_threads(threads: int) -> int:
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    return torch.get_num_threads()


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """Best wall time of `repeat` calls and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result
