"""Completion of a kept region against the information limit: how often the feature classifier reads a completion
as the original digit's class (the class is inferred, not given), beside what the kept part alone tells.

The reference is a classifier trained only on the kept pixels (the same region, the rest black) of the training
digits the feature networks learn from: its mean probability of the true class on the judged digits is the read
rate a perfect sampler of p(unknown | kept) would reach. Regions: top (code rows 0-2, the exact prefix path of a
raster kind), bottom (rows 4-6), left (columns 0-2), right (columns 4-6; each of these is exact too when the prior
learned the order in which it is a prefix: gated_pixelcnn's `orders`), a random 50% of code positions (one fixed
draw per digit) and a 12x12-pixel box erased at the centre. One completion per digit.

    .venv/bin/python bench/completion.py --run artifacts/mnist --n 1000 --split test
    .venv/bin/python bench/completion.py --split valid --drafts 2 4 8 --sweeps 0 2   # choose settings

`--split valid` judges the validation slice (the kept-part classifiers then train on the rest of the training
split, as the feature networks do); settings are chosen there, the figure is the test split's.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads  # noqa: E402
from train_speed import matmul_gflops  # noqa: E402

import vqprior  # noqa: E402
from vqprior.datasets import ImageSet, load_split, split_holdout  # noqa: E402
from vqprior.datasets.mnist import cache_dir  # noqa: E402
from vqprior.evaluation.classifier import FeatureClassifier, load_spaces, train_classifier  # noqa: E402
from vqprior.guidance import parse  # noqa: E402
from vqprior.masks import code_mask, erase_box, pixel_view, region  # noqa: E402

REGIONS = ["top", "bottom", "left", "right", "random50", "box12"]


def masks(name: str, n: int, grid: tuple[int, int], image_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Code masks [n, h, w] (True = kept) of one region."""
    if name == "random50":
        gen = torch.Generator().manual_seed(seed)
        scores = torch.rand(n, grid[0] * grid[1], generator=gen)
        keep = scores.argsort(1).argsort(1) < grid[0] * grid[1] // 2
        return keep.view(n, *grid)
    if name == "top":  # the rows a raster kind continues exactly
        keep = torch.zeros(n, *grid, dtype=torch.bool)
        keep[:, : grid[0] // 2] = True
        return keep
    if name == "box12":
        h, w = image_size
        x0, y0 = (w - 12) // 2, (h - 12) // 2
        box = erase_box(f"{x0},{y0},{x0 + 12},{y0 + 12}", image_size)
        return code_mask(box, n, grid, image_size)
    return region(name, grid)[None].expand(n, -1, -1).clone()


def kept_pixels(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The images with every pixel of an unkept code black: what a completion starts from."""
    shown = pixel_view(keep, images.shape[2:])[:, None]
    return torch.where(shown, images, torch.zeros_like(images))


def reference(name: str, fit: ImageSet, judged: torch.Tensor, labels: torch.Tensor, grid, fingerprint: str) -> float:
    """Mean p(true class) of a classifier trained on the kept pixels only (cached per region and data)."""
    path = cache_dir() / "bench-kept-part" / f"{name}-{fingerprint}.pt"
    size = tuple(fit.images.shape[2:])
    model = FeatureClassifier(fit.images.shape[1], size[0], fit.num_classes)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        train_keep = masks(name, len(fit), grid, size, seed=1)  # other random draws than the judged digits'
        masked = ImageSet(kept_pixels(fit.images, train_keep), fit.labels, fit.class_names)
        model = train_classifier(masked, torch.device("cpu"), seed=3)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model.eval()
    with torch.no_grad():
        p = torch.cat([model(t.float() / 255).softmax(1) for t in judged.split(1000)])
    return float(p[torch.arange(len(labels)), labels].double().mean())


def parse_guidance(text: str | None):
    return None if text in (None, "default") else parse(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="artifacts/mnist")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--split", choices=["test", "valid"], default="test")
    ap.add_argument("--regions", nargs="+", default=REGIONS, choices=REGIONS)
    ap.add_argument("--drafts", type=int, nargs="+", default=[None], help="drafts per class (default: complete's)")
    ap.add_argument("--sweeps", type=int, nargs="+", default=[None], help="MCMC sweeps (default: complete's)")
    ap.add_argument("--guidance", nargs="+", default=[None], help="guidance (default: the run's); e.g. 1 2 1.25:2")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    threads = pin_threads(args.threads)
    run = vqprior.load(args.run, device="cpu")
    fit, valid = split_holdout(load_split(run.data, "train"))
    judged_set = load_split(run.data, "test") if args.split == "test" else valid
    judge = load_spaces(fit, load_split(run.data, "test"), torch.device("cpu"))["cnn"][0]
    images, labels = judged_set.images[: args.n], judged_set.labels[: args.n].long()
    fingerprint = f"{len(fit)}-{int(fit.images[:100].sum())}"  # the kept-part classifiers train on `fit` either way
    kind = type(run.prior).__name__ + "".join(f" +{o}" for o in getattr(run.prior, "orders", {}))
    print(
        f"# {args.run} ({kind}): {args.n} {args.split} digits, class inferred, 1 completion each; threads={threads}, "
        f"yardstick {matmul_gflops(torch.device('cpu'), torch.float32, 3.0):.0f} GFLOP/s"
    )
    print(
        "region | kept codes | drafts | sweeps | guidance | read as the true class | kept-part reference | share | how | "
        "s for all | 8 completions of one input (median of 3)"
    )
    for name in args.regions:
        keep = masks(name, args.n, run.grid, tuple(run.image_shape[1:]))
        ref = reference(name, fit, kept_pixels(images, keep), labels, run.grid, fingerprint)
        for drafts, sweeps, guidance in itertools.product(args.drafts, args.sweeps, args.guidance):
            options = {
                k: v
                for k, v in (("drafts", drafts), ("sweeps", sweeps), ("guidance", parse_guidance(guidance)))
                if v is not None
            }
            t0 = time.perf_counter()
            done = [
                run.complete(images[i : i + 250], keep=keep[i : i + 250], samples=1, **options)
                for i in range(0, args.n, 250)
            ]
            seconds = time.perf_counter() - t0
            completed = torch.cat([d.images[:, 0] for d in done])
            _, predictions = judge.features_and_predictions(completed)
            accuracy = float((predictions == labels).double().mean())
            times = []
            for _ in range(3):
                t1 = time.perf_counter()
                run.complete(images[:1], keep=keep[:1], samples=8, **options)
                times.append(time.perf_counter() - t1)
            print(
                f"{name} | {int(keep[0].sum())}/{keep[0].numel()} | {drafts or 'default'} | "
                f"{sweeps if sweeps is not None else 'default'} | {guidance or 'default'} | {accuracy:.1%} | {ref:.1%} | "
                f"{accuracy / ref:.0%} | {done[0].method} ({done[0].order}) | {seconds:.1f} | "
                f"{statistics.median(times):.2f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
