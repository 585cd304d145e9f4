"""Where a stage runs (device, threads, seeds) and how it reports progress without printing."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch

from .config import RunSection
from .errors import UserError

T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"run.device={name!r} is not a torch device; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"run.device={name!r} but no CUDA device is available; use run.device=auto or cpu")
    return dev


def setup(run: RunSection) -> torch.device:
    """Pin CPU threads and seed every generator; returns the device to use."""
    torch.set_num_threads(run.threads or cpu_count())
    seed_everything(run.seed)
    return resolve_device(run.device)


def cpu_count() -> int:
    """Cores this process may use (respects taskset/cgroup affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Reporter:
    """A stage's link to the console. The library default is silent; the CLI installs a rich one."""

    def log(self, message: str) -> None:
        pass

    def track(self, items: Iterable[T], total: int, description: str) -> Iterator[T]:
        yield from items


def batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Index batches over n items, shuffled when a generator is given; the last batch may be short."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero: the most out of a short, fixed training budget."""
    import math

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

