"""Is this an MNIST test digit? AUROC of likelihood-based scores against inputs that are not.

Scores (higher = more unusual): the code map's bits under the prior (marginal over classes), the VQ-VAE's
reconstruction error, and their combination, the image-level bound (code bits + pixel bits).
Outliers: uniform noise, inverted digits, digits rotated 90 degrees, constant images, and grayscale 28x28
crops of the natural photos that scikit-learn ships (installed with the MNIST package).

    .venv/bin/python bench/ood.py --run artifacts/mnist --n 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads  # noqa: E402

import vqprior  # noqa: E402
from vqprior.config import DataSection  # noqa: E402
from vqprior.datasets import load_split  # noqa: E402


def auroc(inliers: torch.Tensor, outliers: torch.Tensor) -> float:
    """P(score of a random outlier > score of a random inlier), ties counted half (Mann-Whitney U)."""
    scores = torch.cat([inliers, outliers]).double()
    ranks = torch.empty_like(scores)
    order = scores.argsort()
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores.unique():  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_in, n_out = len(inliers), len(outliers)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def natural_patches(n: int, seed: int = 0) -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    gen = np.random.default_rng(seed)
    photos = [np.asarray(img, dtype=np.float64).mean(2) for img in load_sample_images().images]
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        size = int(gen.integers(28, 112))
        y, x = gen.integers(0, photo.shape[0] - size), gen.integers(0, photo.shape[1] - size)
        crop = torch.from_numpy(photo[y : y + size, x : x + size]).float()[None, None]
        out.append(torch.nn.functional.interpolate(crop, size=(28, 28), mode="area")[0])
    return torch.stack(out).round().clamp(0, 255).to(torch.uint8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="artifacts/mnist")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"# threads={pin_threads(args.threads)}; {args.n} MNIST test digits as inliers; run {args.run}")
    run = vqprior.load(args.run, device="cpu")
    digits = load_split(DataSection(test_limit=args.n), "test").images
    gen = torch.Generator().manual_seed(0)
    outliers = {
        "uniform noise": torch.randint(0, 256, digits.shape, generator=gen, dtype=torch.uint8),
        "inverted digits": 255 - digits,
        "rotated 90 degrees": digits.rot90(1, (2, 3)).contiguous(),
        "constant images": torch.randint(0, 256, (len(digits), 1, 1, 1), generator=gen, dtype=torch.uint8)
        .expand_as(digits)
        .contiguous(),
        "natural-image patches": natural_patches(len(digits)),
    }
    inlier = run.score(digits)
    keys = {"code bits": "code_bits", "recon error": "recon_mse", "combined bound": "image_bits_bound"}
    print(f"{'outliers':<24}" + "".join(f"{k:>16}" for k in keys))
    for what, images in outliers.items():
        scores = run.score(images)
        print(f"{what:<24}" + "".join(f"{auroc(inlier[v], scores[v]):>16.3f}" for v in keys.values()), flush=True)
    pred, _ = run.classify(digits)
    labels = load_split(DataSection(test_limit=args.n), "test").labels
    print(f"# generative classifier (argmax_c p(codes|c) p(c)) on these digits: {(pred == labels).double().mean():.2%}")


if __name__ == "__main__":
    main()
