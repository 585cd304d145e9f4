"""Sample quality over guidance x temperature for one trained run, in every feature space of `vqprior eval`,
scored against the held-out validation slice (never the test split), with several sampling seeds.

One line per setting: worst-space FD / floor and each space's, KID x 1000 (cnn), conditional accuracy, sampling
seconds per 1,000 maps; the median and range over the seeds. `--decode-steps` (a masked prior only) adds the number of
parallel decoding steps to the grid. The floor is the same n of held-out real images (the test split here, since the
validation slice is the reference).

    .venv/bin/python bench/sampling_grid.py --run artifacts/mnist --guidance 1 1.25 1.5 2 --temperature 0.9 1
    .venv/bin/python bench/sampling_grid.py --run artifacts/masked --guidance 1.5 --decode-steps 4 8 12 49
    .venv/bin/python bench/sampling_grid.py --run artifacts/mnist --guidance 1.5 1.25:1.75 1.25:2   # ramps
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

from vqprior import guidance  # noqa: E402
from vqprior.datasets import load_split, split_holdout  # noqa: E402
from vqprior.evaluation.classifier import load_spaces  # noqa: E402
from vqprior.evaluation.frechet import frechet_distance_from_stats, gaussian_stats, kernel_distance, kernel_self_term  # noqa: E402
from vqprior.evaluation.run_eval import SEEN_VALIDATION, class_counts  # noqa: E402
from vqprior.models.priors.base import generate  # noqa: E402
from vqprior.models.vqvae import decode_images  # noqa: E402
from vqprior.restore import load_prior, load_vqvae  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="artifacts/mnist")
    ap.add_argument(
        "--guidance", type=guidance.parse, nargs="+", default=[1.0, 1.25, 1.5, 2.0], help="scales, or first:last ramps"
    )
    ap.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    ap.add_argument(
        "--decode-steps", type=int, nargs="+", default=[None], help="parallel decoding steps (masked prior only)"
    )
    ap.add_argument(
        "--choice-temperature", type=float, nargs="+", default=[None], help="masked prior: Gumbel scale of the order"
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    threads = pin_threads(args.threads)
    cpu = torch.device("cpu")
    vq, prior, spaces, refs, labels = references(Path(args.run), args.n, cpu)
    print(
        f"# {args.run}: n={args.n} vs the validation slice, floors "
        + ", ".join(f"{k} {v[2]:.3f}" for k, v in refs.items())
        + f"; {args.seeds} seeds; threads={threads}, yardstick {matmul_gflops(cpu, torch.float32, 3.0):.0f} GFLOP/s",
        flush=True,
    )
    print(
        "guidance | temperature | steps | worst FD/floor (range) | "
        + " | ".join(spaces)
        + " | KID x1000 cnn | cond. acc. | sampling s / 1,000 maps"
    )
    settings = [
        (g, t, s, c)
        for g in args.guidance
        for t in args.temperature
        for s in args.decode_steps
        for c in args.choice_temperature
    ]
    for g, t, steps, choice in settings:
        if choice is not None:
            prior.model.choice_temperature = choice
        rows, sampling = [], 0.0
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            codes = generate(prior.model, args.n, prior.grid, labels, t, 100 + seed, guidance=g, decode_steps=steps)
            sampling += time.perf_counter() - t0
            rows.append(score(spaces, refs, decode_images(vq.model, codes), labels))
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        lo, hi = min(r["worst"] for r in rows), max(r["worst"] for r in rows)
        shown = steps if steps is not None else getattr(prior.model, "decode_steps", "raster")
        if choice is not None:
            shown = f"{shown} (order Gumbel {choice:g})"
        print(
            f"{guidance.label(g)} | {t:g} | {shown} | {med['worst']:.2f}x ({lo:.2f}-{hi:.2f}) | "
            + " | ".join(f"{med[name]:.2f}x" for name in spaces)
            + f" | {med['kid']:.2f} | {med['acc']:.1%} | {sampling / args.seeds / args.n * 1000:.2f}",
            flush=True,
        )


def references(run: Path, n: int, device: torch.device):
    """(vqvae, prior, spaces, refs, labels) for scoring n samples of `run` against its validation slice: refs[space]
    = (validation features, their Gaussian stats, the floor: n held-out test images against them, KID self term);
    labels: n classes at the training split's class mix."""
    vq = load_vqvae(run, None, device)
    prior = load_prior(run, None, device, vqvae=vq)
    data = vq.run.data()
    train, test = load_split(data, "train"), load_split(data, "test")
    fit, valid = split_holdout(train)
    if not data.holdout:
        print(f"# warning: {SEEN_VALIDATION}", flush=True)
    spaces = load_spaces(fit, test, device)
    real = test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:n]]
    refs = {}
    for name, (net, _) in spaces.items():
        ref_feats = net.features_and_predictions(valid.images)[0]
        real_feats = net.features_and_predictions(real)[0]
        stats = gaussian_stats(ref_feats)
        floor = frechet_distance_from_stats(*gaussian_stats(real_feats), *stats)
        refs[name] = (ref_feats, stats, floor, kernel_self_term(ref_feats))
    labels = torch.cat(
        [torch.full((k,), c) for c, k in enumerate(class_counts(n, train.labels, prior.model.num_classes))]
    )
    return vq, prior, spaces, refs, labels


def score(spaces: dict, refs: dict, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """FD / floor in every space, KID x 1000 (cnn), conditional accuracy (the cnn judge) and the worst space."""
    row = {}
    for name, (net, _) in spaces.items():
        feats, preds = net.features_and_predictions(images)
        ref_feats, stats, floor, ref_term = refs[name]
        row[name] = frechet_distance_from_stats(*gaussian_stats(feats), *stats) / floor
        if name == "cnn":
            row["kid"] = kernel_distance(ref_feats, feats, real_term=ref_term) * 1000
            row["acc"] = float((preds == labels).double().mean())
    row["worst"] = max(row[name] for name in spaces)
    return row


if __name__ == "__main__":
    main()
