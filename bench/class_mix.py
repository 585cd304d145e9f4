"""How much a sample's Fréchet distance owes to its class mix alone, measured on real digits only.

In each feature space of `vqprior eval`: the FD to the test split of the floor's real set (the held-out validation
slice), and of two equal-sized draws from the rest of the training split, one at the data's own class frequencies
and one with the same number of images per class (what samples spread evenly over the classes would be). Both draws
are real, equally many and from the same pool, so their ratio is the price of the class mix alone. `vqprior eval`
draws its samples at the training split's class frequencies for this reason.

    .venv/bin/python bench/class_mix.py            # MNIST, 5,000 images per draw
    .venv/bin/python bench/class_mix.py --n 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads  # noqa: E402

from vqprior.config import DataSection  # noqa: E402
from vqprior.datasets import load_split, split_holdout  # noqa: E402
from vqprior.evaluation.classifier import load_spaces  # noqa: E402
from vqprior.evaluation.frechet import frechet_distance_from_stats, gaussian_stats  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="images per draw (a multiple of the number of classes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    pin_threads(args.threads)
    data = DataSection()
    train, test = load_split(data, "train"), load_split(data, "test")
    fit, valid = split_holdout(train)
    classes = int(fit.labels.max()) + 1
    g = torch.Generator().manual_seed(args.seed)
    natural = torch.randperm(len(fit), generator=g)[: args.n]
    per_class = args.n // classes
    even = torch.cat(
        [
            members[torch.randperm(len(members), generator=g)[:per_class]]
            for members in (torch.nonzero(fit.labels == c).flatten() for c in range(classes))
        ]
    )
    share = torch.bincount(test.labels, minlength=classes).double() / len(test)
    print(f"# test split class shares {min(share):.2%}–{max(share):.2%}; draws of {args.n} from {len(fit)} images")
    print("space | floor FD (held-out slice) | FD, own class mix | FD, even classes | even / own")
    for name, (net, _) in load_spaces(fit, test, torch.device("cpu")).items():
        ref = gaussian_stats(net.features_and_predictions(test.images)[0])

        def fd(images: torch.Tensor) -> float:
            return frechet_distance_from_stats(*gaussian_stats(net.features_and_predictions(images)[0]), *ref)

        floor, own, balanced = fd(valid.images), fd(fit.images[natural]), fd(fit.images[even])
        print(f"{name} | {floor:.4f} | {own:.4f} | {balanced:.4f} | {balanced / own:.2f}x", flush=True)


if __name__ == "__main__":
    main()
