"""Reconstruction quality of one or more runs' VQ-VAEs in every feature space of `vqprior eval`, on the held-out
validation slice (never the test split): FD of the reconstructions of the validation images against the validation
images, as a ratio to the real-data floor (the test split's FD against the same images), plus MSE, code usage
and perplexity.

    .venv/bin/python bench/reconstruction.py --runs artifacts/bf16 artifacts/fsq
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads  # noqa: E402
from train_speed import matmul_gflops  # noqa: E402

from vqprior.datasets import load_split, split_holdout  # noqa: E402
from vqprior.evaluation import reconstruction_metrics  # noqa: E402
from vqprior.evaluation.classifier import load_spaces  # noqa: E402
from vqprior.evaluation.frechet import frechet_distance_from_stats, gaussian_stats  # noqa: E402
from vqprior.models.vqvae import decode_images, encode_images  # noqa: E402
from vqprior.restore import load_vqvae  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", default=["artifacts/mnist"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    threads = pin_threads(args.threads)
    cpu = torch.device("cpu")
    first = load_vqvae(Path(args.runs[0]), None, cpu)
    train, test = load_split(first.run.data(), "train"), load_split(first.run.data(), "test")
    fit, valid = split_holdout(train)
    spaces = load_spaces(fit, test, cpu)
    refs = {}
    for name, (net, _) in spaces.items():
        stats = gaussian_stats(net.features_and_predictions(valid.images)[0])
        floor = frechet_distance_from_stats(*gaussian_stats(net.features_and_predictions(test.images)[0]), *stats)
        refs[name] = (stats, floor)
    print(
        f"# validation slice ({len(valid)} images) vs its reconstructions; floors "
        + ", ".join(f"{k} {v[1]:.3f}" for k, v in refs.items())
        + f"; threads={threads}, yardstick {matmul_gflops(cpu, torch.float32, 3.0):.0f} GFLOP/s"
    )
    print("run | quantizer | worst recon FD/floor | " + " | ".join(spaces) + " | MSE | codes used | perplexity")
    for run in args.runs:
        vq = load_vqvae(Path(run), None, cpu)
        recon = decode_images(vq.model, encode_images(vq.model, valid.images))
        ratios = {}
        for name, (net, _) in spaces.items():
            stats, floor = refs[name]
            ratios[name] = (
                frechet_distance_from_stats(*gaussian_stats(net.features_and_predictions(recon)[0]), *stats) / floor
            )
        m = reconstruction_metrics(vq.model, valid, cpu)
        kind = type(vq.model.quantizer).__name__
        print(
            f"{run} | {kind} | {max(ratios.values()):.2f}x | "
            + " | ".join(f"{r:.2f}x" for r in ratios.values())
            + f" | {m['recon_mse']:.5f} | {m['usage']:.0%} | {m['perplexity']:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
