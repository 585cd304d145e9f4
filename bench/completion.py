"""Completion of a kept region, judged by the feature classifier: how often it reads a completion as the original
test digit's class (the class is inferred, not given), for four regions on the same test digits, and the time of
8 completions of one input.

Regions: top (the top 3 of 7 code rows, the exact prefix path of a raster kind), bottom (code rows 4-6), left
(code columns 0-2) and a random 50% of code positions (one fixed draw per digit). One completion per digit.

    .venv/bin/python bench/completion.py --run artifacts/mnist --n 1000
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

import vqprior  # noqa: E402
from vqprior.datasets import load_split, split_holdout  # noqa: E402
from vqprior.evaluation.classifier import load_spaces  # noqa: E402
from vqprior.masks import region  # noqa: E402


def masks(name: str, n: int, grid: tuple[int, int]) -> torch.Tensor:
    """Code masks [n, h, w] (True = kept) of one region."""
    if name == "random50":
        gen = torch.Generator().manual_seed(0)
        scores = torch.rand(n, grid[0] * grid[1], generator=gen)
        keep = scores.argsort(1).argsort(1) < grid[0] * grid[1] // 2
        return keep.view(n, *grid)
    if name == "top":  # the rows a raster kind continues exactly
        keep = torch.zeros(n, *grid, dtype=torch.bool)
        keep[:, : grid[0] // 2] = True
        return keep
    return region(name, grid)[None].expand(n, -1, -1).clone()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="artifacts/mnist")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--regions", nargs="+", default=["top", "bottom", "left", "random50"])
    ap.add_argument("--sweeps", type=int, default=2, help="MCMC sweeps (raster kinds, regions that are not a prefix)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    threads = pin_threads(args.threads)
    run = vqprior.load(args.run, device="cpu")
    test = load_split(run.data, "test")
    fit, _ = split_holdout(load_split(run.data, "train"))
    classifier = load_spaces(fit, test, torch.device("cpu"))["cnn"][0]
    images, labels = test.images[: args.n], test.labels[: args.n].long()
    kind = type(run.prior).__name__
    print(
        f"# {args.run} ({kind}): {args.n} test digits, class inferred, 1 completion each; threads={threads}, "
        f"yardstick {matmul_gflops(torch.device('cpu'), torch.float32, 3.0):.0f} GFLOP/s"
    )
    print(
        "region | kept codes | read as the original class | how | s for all | 8 completions of one input (median of 3)"
    )
    for name in args.regions:
        keep = masks(name, args.n, run.grid)
        t0 = time.perf_counter()
        done = [
            run.complete(images[i : i + 250], keep=keep[i : i + 250], samples=1, sweeps=args.sweeps)
            for i in range(0, args.n, 250)
        ]
        seconds = time.perf_counter() - t0
        completed = torch.cat([d.images[:, 0] for d in done])
        _, predictions = classifier.features_and_predictions(completed)
        accuracy = float((predictions == labels).double().mean())
        times = []
        for _ in range(3):
            t1 = time.perf_counter()
            run.complete(images[:1], keep=keep[:1], samples=8, sweeps=args.sweeps)
            times.append(time.perf_counter() - t1)
        how = {"exact": "exact", "parallel": "parallel decoding", "mcmc": f"MCMC, {args.sweeps} sweeps"}[done[0].method]
        print(
            f"{name} | {int(keep[0].sum())}/{keep[0].numel()} | {accuracy:.1%} | {how} | {seconds:.0f} | "
            f"{statistics.median(times):.2f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
