"""Time to sample code maps: the gated PixelCNN's cached raster sampler against the masked kind's S-step parallel
decoding, on 7x7 maps (MNIST) and 16x16 maps (a larger image or a finer code), with the default network sizes and
guidance 1.5 (a doubled batch), measured in one run, alternating, with the machine's yardstick beside them.

Random weights: the time of a sampler does not depend on them (the quality of the two on MNIST codes is measured by
`bench/sampling_grid.py --decode-steps ...` on trained priors).

    .venv/bin/python bench/parallel_decoding.py [--grids 7 16] [--decode-steps 4 8 12 49] [--maps 500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads  # noqa: E402
from train_speed import matmul_gflops  # noqa: E402

from vqprior import components  # noqa: E402
from vqprior.config import prior_network  # noqa: E402
from vqprior.models.priors.base import generate  # noqa: E402


def build(kind: str, grid: tuple[int, int]) -> torch.nn.Module:
    torch.manual_seed(0)
    resolved = components.resolve(prior_network(kind), codebook_size=128, num_classes=10, grid=list(grid))
    return components.instantiate(resolved).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grids", type=int, nargs="+", default=[7, 16])
    ap.add_argument("--decode-steps", type=int, nargs="+", default=[4, 8, 12, 49])
    ap.add_argument("--maps", type=int, default=500, help="maps per timing (batches of 250)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    threads = pin_threads(args.threads)
    cpu = torch.device("cpu")
    print(
        f"# threads={threads}, torch {torch.__version__}, yardstick {matmul_gflops(cpu, torch.float32, 3.0):.0f} GFLOP/s; "
        f"{args.maps} maps per timing, guidance 1.5, median of {args.repeat}"
    )
    print("grid | sampler | seconds per 1,000 maps | relative to the raster sampler")
    labels = torch.arange(args.maps) % 10
    for size in args.grids:
        grid = (size, size)
        models = {"gated_pixelcnn (cached, raster)": (build("gated_pixelcnn", grid), None)}
        masked = build("masked", grid)
        for s in args.decode_steps:
            models[f"masked, {s} steps"] = (masked, s)
        times = {name: [] for name in models}
        for _ in range(args.repeat):  # alternate the samplers so a slower minute of the machine hits them all
            for name, (model, steps) in models.items():
                t0 = time.perf_counter()
                generate(model, args.maps, grid, labels, guidance=1.5, batch_size=250, decode_steps=steps)
                times[name].append((time.perf_counter() - t0) / args.maps * 1000)
        base = statistics.median(times["gated_pixelcnn (cached, raster)"])
        for name, t in times.items():
            print(
                f"{size}x{size} | {name} | {statistics.median(t):.2f} | {statistics.median(t) / base:.2f}x", flush=True
            )
    print(f"# yardstick at the end {matmul_gflops(cpu, torch.float32, 3.0):.0f} GFLOP/s")


if __name__ == "__main__":
    main()
