"""Naive vs cached sampling speed of the gated PixelCNN prior, measured in one run.

    python bench/sampling.py [--run artifacts/mnist] [--threads 2]

Uses the trained prior of --run when it exists, else a randomly initialised prior of the default
architecture (speed does not depend on the weights). Prints one line per configuration:
    7x7 batch=256 threads=2 naive=... codes/s cached=... codes/s speedup=...x cached/forward=...
Naive runs that would take long are timed on one position per row and scaled by the row width
(each position of a row costs the same in the naive sampler); those lines say "naive~".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads, timed  # noqa: E402

from vqprior.config import Config  # noqa: E402
from vqprior.models.priors.base import GumbelNoise, sample  # noqa: E402
from vqprior.models.priors.gated_pixelcnn import GatedPixelCNN  # noqa: E402
from vqprior.run_folder import RunFolder  # noqa: E402


def load_model(run: Path) -> tuple[GatedPixelCNN, str]:
    if RunFolder(run).finished(3):
        from vqprior.restore import load_prior

        return load_prior(run, needed_by=4, device=torch.device("cpu")).model, f"trained prior from {run}"
    return GatedPixelCNN(
        64, **Config().prior.network.params, num_classes=10
    ).eval(), "randomly initialised default prior"


def naive_estimate(model, batch, grid, labels) -> float:
    """Seconds for a full naive sampling pass, from one timed position per row."""
    height, width = grid
    cond = model.condition(labels, batch)
    codes = torch.randint(0, model.codebook_size, (batch, height, width))
    noise = GumbelNoise(0, 0, batch, torch.device("cpu"))
    total = 0.0
    with torch.no_grad():
        for i in range(height):
            t0 = time.perf_counter()
            h = model.features(codes[:, : i + 1], cond)
            noise.draw(model.head(h[:, :, i, 0]), 1.0)
            total += (time.perf_counter() - t0) * width
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="artifacts/mnist")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,64,256,1000")
    ap.add_argument("--grids", default="7,16")
    ap.add_argument("--naive-budget", type=float, default=20.0, help="seconds above which naive is estimated per row")
    args = ap.parse_args()
    threads = pin_threads(args.threads)
    model, what = load_model(Path(args.run))
    print(
        f"# {what}: {model.num_classes} classes, K={model.codebook_size}, {len(model.layers)} layers, "
        f"{model.embed.weight.shape[1]} channels; torch {torch.__version__}, threads={threads}"
    )
    for size in (int(s) for s in args.grids.split(",")):
        grid = (size, size)
        for batch in (int(b) for b in args.batches.split(",")):
            labels = torch.arange(batch) % model.num_classes if model.num_classes else None
            codes_per_map = size * size
            cached_s, _ = timed(
                lambda: sample(model, batch, grid, labels, seed=0, method="cached"), repeat=2 if batch <= 256 else 1
            )
            estimate = naive_estimate(model, batch, grid, labels)
            if estimate <= args.naive_budget:
                naive_s, _ = timed(lambda: sample(model, batch, grid, labels, seed=0, method="naive"))
                tag = "naive="
            else:
                naive_s, tag = estimate, "naive~"
            x = torch.randint(0, model.codebook_size, (batch, *grid))
            with torch.no_grad():
                forward_s, _ = timed(lambda: model(x, labels), repeat=2)
            rate = lambda s: batch * codes_per_map / s  # noqa: E731
            print(
                f"{size}x{size} batch={batch} threads={threads} {tag}{rate(naive_s):,.0f} codes/s cached={rate(cached_s):,.0f} codes/s "
                f"speedup={naive_s / cached_s:.1f}x cached/forward={cached_s / forward_s:.2f} "
                f"images/s naive={batch / naive_s:,.1f} cached={batch / cached_s:,.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
