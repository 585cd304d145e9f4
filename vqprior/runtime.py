"""Where a stage runs: device, threads, seeds, and whether this process is one of many (torchrun).

`Runtime` is the one place that knows about processes. Everything that writes files or prints asks
`runtime.is_main`; everything that needs a device asks `runtime.device`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from .config import RunSection
from .errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    seed: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def setup(cls, run: RunSection) -> "Runtime":
        """Pin CPU threads, seed every generator and pick the device. Under torchrun (RANK/WORLD_SIZE set) the
        process group is joined and each process takes the GPU of its local rank."""
        rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
        # processes on one machine share its cores (torchrun sets LOCAL_WORLD_SIZE); more threads than cores slows all
        torch.set_num_threads(run.threads or max(1, cpu_count() // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
        seed_everything(run.seed)
        device = resolve_device(run.device, local if world > 1 else None)
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(device, rank, world, local, run.seed)

    def seed_all(self) -> None:
        """Every stage starts from the run's seed, so a stage gives the same result alone or inside `vqprior run`."""
        seed_everything(self.seed)

    def share(self, value):
        """Rank 0's value on every process (any picklable object); the value itself with one process."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every process's value, in rank order (one process: [value])."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count() if local_rank is not None else torch.cuda.current_device())
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"run.device={name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"run.device={name!r} but no CUDA device is available; use run.device=auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"run.device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0..")
    return dev


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
    """A stage's link to the console. The library default is silent; the CLI installs a rich one (rank 0 only)."""

    def log(self, message: str) -> None:
        pass

    def track(self, items: Iterable[T], total: int, description: str) -> Iterator[T]:
        yield from items


def batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Index batches over n items, shuffled when a generator is given; the last batch may be short."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))
