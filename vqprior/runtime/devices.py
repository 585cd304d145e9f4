"""Devices: which one a process uses, whether the CPU multiplies bf16 in hardware, the precision that follows, and
the switches for bitwise-repeatable CUDA runs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import UserError


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


def make_deterministic() -> None:
    """Bitwise-repeatable runs on CUDA too: deterministic kernels only (an op without one raises), cuBLAS with a
    fixed workspace, no TF32, no cuDNN autotuning. Slower; for checking, not for speed."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def cpu_count() -> int:
    """Cores this process may use (respects taskset/cgroup affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


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
