"""This machine's yardstick: dense fp32 matmul GFLOP/s with torch's default threads (CUDA: fp32 and bf16).

    .venv/bin/python bench/yardstick.py [--device cpu]

Machines of one kind differ in speed (up to ~3x here): quote it beside a wall time measured in the same session.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import matmul_gflops  # noqa: E402

from vqprior.runtime.devices import resolve_device  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    device = resolve_device(ap.parse_args().device)
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"yardstick ({name}): "
        + ", ".join(f"{str(d).split('.')[1]} {matmul_gflops(device, d, 3.0):,.1f} GFLOP/s" for d in dtypes)
    )
