"""Where a stage runs: device, precision, compilation, threads, seeds, and whether this process is one of many (torchrun).

This package is the one place that knows about processes and devices: `Runtime` (here) decides and holds them,
`devices.py` resolves and describes devices, `processes.py` reads torchrun's variables and words the errors of lost
peers, `compile.py` wraps torch.compile with its fallback. Everything that writes files or prints asks
`runtime.is_main`; everything that needs a device asks `runtime.device`; device-dependent choices (autocast,
torch.compile, batch sizes) are made here from the config, not scattered through the stages.
Under torchrun each process takes the GPU of its local rank (torch.cuda.set_device before joining the group).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from ..config import RunSection
from ..errors import UserError
from .devices import cpu_count, default_precision, make_deterministic, resolve_device
from .processes import first_line, process_place


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    seed: int = 0
    precision: str = "fp32"  # resolved: "fp32" or "bf16" (autocast)
    compile: bool = False  # resolved: torch.compile the training steps

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def setup(cls, run: RunSection) -> "Runtime":
        """Pin CPU threads, seed every generator and pick the device. Under torchrun (RANK/WORLD_SIZE set) each
        process takes the GPU of its local rank, sets it as the current device and then joins the process group."""
        rank, world, local, local_world = process_place()
        # processes on one machine share its cores (torchrun sets LOCAL_WORLD_SIZE); more threads than cores slows all
        torch.set_num_threads(run.threads or max(1, cpu_count() // local_world))
        seed_everything(run.seed)
        device = resolve_device(run.device, local if world > 1 else None, local_world if world > 1 else 1)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # before the process group: NCCL and the object collectives use it
            # TF32 tensor cores for float32 matmuls and convolutions: ~10 bits of mantissa, plenty for these models
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not run.deterministic
            torch.backends.cudnn.benchmark = not run.deterministic  # fixed shapes: let cuDNN pick its fastest kernels
        if run.deterministic:
            make_deterministic()
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                try:
                    dist.init_process_group(
                        "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=run.timeout_s)
                    )
                except (dist.DistError, RuntimeError, ValueError) as e:
                    raise UserError(
                        f"[rank {rank}] could not join the other {world - 1} torchrun process(es) "
                        f"({first_line(e)}); check --nnodes/--nproc-per-node and the rendezvous address, or "
                        f"choose a free --master-port"
                    ) from None
        precision = run.precision if run.precision != "auto" else default_precision(device)
        compiled = run.compile if run.compile != "auto" else device.type == "cuda"
        return cls(device, rank, world, local, run.seed, precision, bool(compiled))

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on this device when the precision says so (matmuls and convolutions in bf16, reductions
        and losses in float32); a no-op for fp32."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

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

    # ---------------------------------------------------------------- tensor collectives (no host sync)
    @property
    def collectives(self) -> "Collectives | None":
        """Sums and gathers over every process for code that must combine them (the quantizer's `sync`); None with
        one process."""
        return Collectives(self.rank, self.world_size) if self.distributed else None

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over every process, in place (unchanged with one process)."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def broadcast_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.distributed:
            import torch.distributed as dist

            dist.broadcast(t, src=src)
        return t

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as the training step should call it: DistributedDataParallel under torchrun (gradients averaged
        across processes), the model itself with one process."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def my_range(self, n: int) -> tuple[int, int]:
        """[lo, hi) of n items that this process handles (stages 2 and 4 split their work so); all with one."""
        return (n * self.rank) // self.world_size, (n * (self.rank + 1)) // self.world_size

    def shard(self, items: torch.Tensor) -> torch.Tensor:
        """This process's contiguous part of a global batch or list (all of it with one process)."""
        return items if not self.distributed else items.tensor_split(self.world_size)[self.rank]


@dataclass(frozen=True)
class Collectives:
    """What a model needs to combine its statistics across torchrun processes, handed to it explicitly."""

    rank: int
    world_size: int

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(t)
        return t

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        import torch.distributed as dist

        out = [torch.zeros_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return out


def describe(rt: Runtime, batch: int) -> str:
    """How a stage trains, for its first line: device, precision, compilation, batch, processes."""
    parts = [
        f"device {rt.device}" + (f" ({torch.cuda.get_device_name(rt.device)})" if rt.device.type == "cuda" else ""),
        rt.precision,
        "compiled" if rt.compile else "eager",
        f"batch {batch}",
    ]
    if rt.distributed:
        parts.append(f"{rt.world_size} processes")
    return ", ".join(parts)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batches(
    n: int, batch_size: int, generator: torch.Generator | None = None, device: torch.device | None = None
) -> list[torch.Tensor]:
    """Index batches over n items, shuffled when a generator is given; the last batch may be short. The order is
    drawn on the CPU (the same on every device) and moved to `device` in one copy, so that a training step indexes
    device data with device indices and never waits for a host-to-device copy."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if device is not None and device.type != "cpu":
        order = order.to(device, non_blocking=True)
    return list(order.split(batch_size))
