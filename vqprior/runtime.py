"""Where a stage runs: device, precision, compilation, threads, seeds, and whether this process is one of many (torchrun).

`Runtime` is the one place that knows about processes and devices. Everything that writes files or prints asks
`runtime.is_main`; everything that needs a device asks `runtime.device`; device-dependent choices (autocast,
torch.compile, batch sizes) are made here from the config, not scattered through the stages.
Under torchrun each process takes the GPU of its local rank (torch.cuda.set_device before joining the group).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from .config import RunSection
from .errors import UserError
from .reporter import Reporter  # noqa: F401  (re-exported: stages import it from here)

T = TypeVar("T")


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


def first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def lost_peer(e: BaseException, rank: int) -> UserError | None:
    """The one line for a collective that failed because another torchrun process died or hung (None when `e` is
    something else): every surviving process stops with it instead of a traceback or a hang."""
    import torch.distributed as dist

    text = str(e)
    if isinstance(e, dist.DistError) or any(
        s in text
        for s in (
            "Gloo",
            "gloo",
            "NCCL",
            "Connection closed",
            "Connection reset",
            "Broken pipe",
            "Timed out",
            "timed out",
        )
    ):
        return UserError(
            f"[rank {rank}] lost contact with another torchrun process ({first_line(e)}); every process stops. "
            f"Run the same command again to resume from the last checkpoint"
        )
    return None


def process_place() -> tuple[int, int, int, int]:
    """(rank, world size, local rank, local world size) from torchrun's variables; malformed ones are one line."""
    values = []
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1)):
        raw = os.environ.get(key)
        try:
            value = default if raw is None else int(raw)
        except ValueError:
            value = -1
        if value < (1 if key.endswith("WORLD_SIZE") else 0) or value > 1 << 20:
            raise UserError(
                f"the environment variable {key}={raw!r} is not a valid torchrun setting; unset it, or start "
                f"the command with torchrun"
            )
        values.append(value)
    rank, world, local, local_world = values
    if rank >= world or local >= local_world:
        raise UserError(
            f"RANK={rank}/LOCAL_RANK={local} do not fit WORLD_SIZE={world}/LOCAL_WORLD_SIZE={local_world}; "
            f"unset them, or start the command with torchrun"
        )
    return rank, world, local, local_world


def resolve_device(name: str, local_rank: int | None = None, local_world: int = 1) -> torch.device:
    """The device of this process. `local_rank` is set under torchrun: "auto" and "cuda" then mean the GPU of the
    local rank, and more processes on a machine than it has GPUs is refused (NCCL cannot share one GPU between
    ranks; run one process per GPU, or run.device=cpu to use gloo on the CPU)."""
    if not isinstance(name, str):
        raise UserError(f"device must be a string (auto, cpu, cuda or cuda:N), got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"run.device={name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cpu":
        return dev
    if not torch.cuda.is_available():
        raise UserError(f"run.device={name!r} but no CUDA device is available; use run.device=auto or cpu")
    count = torch.cuda.device_count()
    if local_rank is None:
        if dev.index is not None and dev.index >= count:
            raise UserError(
                f"run.device={name!r} but this machine has {count} CUDA device(s); use cuda:0..cuda:{count - 1}"
            )
        return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
    if dev.index is not None:
        raise UserError(
            f"run.device={name!r} would put every torchrun process on one GPU; use run.device=cuda (or auto): "
            f"each process then takes the GPU of its local rank"
        )
    if max(local_world, local_rank + 1) > count:
        raise UserError(
            f"torchrun started {max(local_world, local_rank + 1)} processes on this machine but it has {count} GPU(s); "
            f"use --nproc-per-node={count} (one process per GPU), or run.device=cpu to train on the CPU with gloo"
        )
    return torch.device("cuda", local_rank)


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


def make_deterministic() -> None:
    """Bitwise-repeatable runs on CUDA too: deterministic kernels only (an op without one raises), cuBLAS with a
    fixed workspace, no TF32, no cuDNN autotuning. Slower; for checking, not for speed."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def maybe_compile(fn: Callable, enabled: bool, reporter: "Reporter", what: str) -> Callable:
    """`fn` compiled with torch.compile when enabled, else `fn`. torch.compile compiles on the first call, so a
    failure (no C compiler, an unsupported op) shows there: then one notice, and `fn` runs eagerly from then on."""
    if not enabled:
        return fn
    compiled = torch.compile(fn)
    state = {"fn": compiled}

    def call(*args, **kwargs):
        if state["fn"] is compiled:
            try:
                return compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure falls back to the same code, uncompiled
                reporter.log(
                    f"[yellow]notice:[/] torch.compile of the {what} failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                    f"running it uncompiled (run.compile=false skips the attempt)"
                )
                state["fn"] = fn
        return state["fn"](*args, **kwargs)

    return call


def cpu_count() -> int:
    """Cores this process may use (respects taskset/cgroup affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX-BF16 tiles or AVX512-BF16), by its capabilities,
    not its vendor: torch's own probe where it has one, else the kernel's CPU flags."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if all(callable(f) for f in probes):
        try:
            return any(bool(f()) for f in probes)
        except RuntimeError:
            pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))


def default_precision(device: torch.device) -> str:
    """run.precision=auto: bf16 autocast on CUDA and on CPUs with bf16 matrix units (stage 3 ran 1.6x faster with the
    same test NLL on such a CPU, docs/numbers.md), fp32 on any other CPU (where bf16 is emulated, and slower)."""
    if device.type == "cuda":
        return "bf16"
    return "bf16" if device.type == "cpu" and cpu_has_bf16_matmul() else "fp32"


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
