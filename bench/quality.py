"""Quality of a finished run: reconstruction, code usage, prior NLL, and whether samples are the class asked for.

    python bench/quality.py [--run artifacts/mnist] [--per-class 100] [--temperature 1.0]

Reads the run's stage metrics and manifests (wall times), draws --per-class samples of every digit with
the cached sampler, decodes them, and lets the bench classifier (bench/classifier.py; trained on first
use) read them. Also times sampling + decoding of 10,000 digits. Writes artifacts/bench/quality_samples.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

sys.path.insert(0, str(Path(__file__).parent))
from classifier import load_or_train, predict  # noqa: E402
from common import pin_threads  # noqa: E402

from vqprior.models.sampling import sample  # noqa: E402
from vqprior.restore import load_prior, load_vqvae  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="artifacts/mnist")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    threads = pin_threads(args.threads)
    run = Path(args.run)
    cpu = torch.device("cpu")

    walls = {}
    for stage in (1, 2, 3, 4):
        m = run / f"stage{stage}" / "manifest.json"
        if m.is_file():
            walls[stage] = json.loads(m.read_text())["timings_s"]["total"]
    s1 = json.loads((run / "stage1" / "metrics.json").read_text())["final"]
    s3 = json.loads((run / "stage3" / "metrics.json").read_text())["final"]
    print(f"# run {run}, threads={threads}")
    print("wall time per stage: " + ", ".join(f"stage {k} {v:.0f}s" for k, v in walls.items()) + f", total {sum(walls.values()):.0f}s")
    print(f"stage 1: test reconstruction MSE {s1['test_recon_mse']:.4f}, codes used {s1['test_usage']:.1%}, perplexity {s1['test_perplexity']:.1f}")
    print(f"stage 3: test NLL {s3['test_bits_per_code']:.3f} bits/code = {s3['test_bits_per_map']:.1f} bits/map")

    prior = load_prior(run, needed_by=4, device=cpu)
    vq = load_vqvae(run, needed_by=4, device=cpu)
    classifier = load_or_train()
    if not prior.model.num_classes:
        print("prior is unconditional: class accuracy not applicable")
        return

    labels = torch.arange(10).repeat_interleave(args.per_class)
    codes = torch.cat([sample(prior.model, len(chunk), prior.grid, chunk, args.temperature, seed=1234 + i)
                       for i, chunk in enumerate(labels.split(1000))])
    images = vq.model.decode(codes).clamp(0, 1)
    predicted = predict(classifier, images)
    per_class = [(predicted[labels == c] == c).float().mean().item() for c in range(10)]
    overall = (predicted == labels).float().mean().item()
    print(f"class-conditional samples read as the requested class: {overall:.1%} of {len(labels)} "
          f"(T={args.temperature:g}); per class: " + " ".join(f"{c}:{a:.0%}" for c, a in enumerate(per_class)))
    out = Path("artifacts/bench/quality_samples.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = torch.cat([images[labels == c][:16] for c in range(10)])
    save_image(grid, out, nrow=16, padding=2, pad_value=0.5)

    labels = torch.arange(10000) % 10
    t0 = time.perf_counter()
    codes = sample(prior.model, 10000, prior.grid, labels, 1.0, seed=0)
    t_sample = time.perf_counter() - t0
    images = torch.cat([vq.model.decode(codes[i : i + 1000]) for i in range(0, 10000, 1000)])
    t_total = time.perf_counter() - t0
    print(f"10,000 digits: sampling {t_sample:.1f}s + decoding {t_total - t_sample:.1f}s = {t_total:.1f}s (one batch, cached sampler)")


if __name__ == "__main__":
    main()
