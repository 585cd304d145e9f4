"""Sampling with a check on the class: maps a separate classifier of code maps reads as another class than the one
asked for are drawn again. Measures what that does to accuracy and distance against the held-out validation slice
(never the test split), in every feature space of `vqprior eval`, with several sampling seeds; a lead, not a feature.

The classifier (a small convolutional network over the code embeddings) trains on the run's own stage-2 training
maps: without the validation slice when the run was trained with data.holdout=true, which this bench needs to mean
anything. The prior's own class posterior cannot serve here: it reads its samples as the class asked for almost
always (docs/numbers.md). A map misread is drawn again with new noise, up to --rounds times.

    .venv/bin/python bench/checked_sampling.py --run artifacts/hz1 --guidance 1.25:2 1.25:1.75 --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads  # noqa: E402
from sampling_grid import references, score  # noqa: E402
from train_speed import matmul_gflops  # noqa: E402

from vqprior import guidance  # noqa: E402
from vqprior.codes import load_code_maps  # noqa: E402
from vqprior.models.priors.base import generate  # noqa: E402
from vqprior.models.vqvae import decode_images  # noqa: E402
from vqprior.run_folder import RunFolder  # noqa: E402


class CodeClassifier(nn.Module):
    """Code maps [B, H, W] -> class logits: embedding, three 3x3 convolutions, mean over the map."""

    def __init__(self, codebook_size: int, num_classes: int, width: int):
        super().__init__()
        self.embed = nn.Embedding(codebook_size, width)
        sizes = [(width, width), (width, 2 * width), (2 * width, 2 * width)]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in sizes)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        h = self.embed(codes).permute(0, 3, 1, 2)
        for conv in self.convs:
            h = F.gelu(conv(h))
        return self.head(F.dropout(h.mean((2, 3)), 0.2, self.training))


def train_classifier(run: Path, codebook_size: int, num_classes: int, width: int, epochs: int) -> CodeClassifier:
    """Trained on stage 2's training maps (AdamW, one cycle, label smoothing 0.1); prints its test-map accuracy."""
    folder, manifest = RunFolder(run).read_stage(2)
    codes, labels = load_code_maps(folder, manifest, "train").tensors()
    test_codes, test_labels = load_code_maps(folder, manifest, "test").tensors()
    torch.manual_seed(0)
    net = CodeClassifier(codebook_size, num_classes, width)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.05)
    steps = epochs * (len(codes) // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(codes))
        for i in range(0, len(codes) - 127, 128):
            idx = order[i : i + 128]
            loss = F.cross_entropy(net(codes[idx]), labels[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(test_codes).argmax(1) == test_labels).double().mean())
    print(f"# classifier: width {width}, {epochs} epochs in {time.perf_counter() - t0:.0f} s, test maps read {acc:.2%}")
    return net


def checked(prior, classifier, n, grid, labels, temperature, seed, scale, rounds) -> tuple[torch.Tensor, int]:
    """n maps; those the classifier misreads drawn again (round r: a job with seed 1000 r + seed over the maps still
    misread, in order), each round classifying only the maps just drawn. Returns the maps and how many draws were made
    beyond n."""
    codes = generate(prior, n, grid, labels, temperature, seed, guidance=scale)
    pending, extra = torch.arange(n), 0
    for r in range(1, rounds + 1):
        with torch.no_grad():
            pending = pending[classifier(codes[pending]).argmax(1) != labels[pending]]
        if not len(pending):
            break
        extra += len(pending)
        codes[pending] = generate(
            prior, len(pending), grid, labels[pending], temperature, 1000 * r + seed, guidance=scale
        )
    return codes, extra


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="artifacts/mnist")
    ap.add_argument("--guidance", type=guidance.parse, nargs="+", default=[(1.25, 2.0)], help="scales or ramps")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=8, help="redraws of a misread map at most")
    ap.add_argument("--width", type=int, default=64, help="classifier width")
    ap.add_argument("--epochs", type=int, default=4, help="classifier epochs")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    threads = pin_threads(args.threads)
    cpu = torch.device("cpu")
    run = Path(args.run)
    vq, prior, spaces, refs, labels = references(run, args.n, cpu)
    if not prior.model.num_classes:
        sys.exit(f"error: {run}'s prior is unconditional: there is no class to check")
    print(
        f"# {run}: n={args.n} vs the validation slice; {args.seeds} sampling seeds; threads={threads}, "
        f"yardstick {matmul_gflops(cpu, torch.float32, 3.0):.0f} GFLOP/s",
        flush=True,
    )
    classifier = train_classifier(run, prior.model.codebook_size, prior.model.num_classes, args.width, args.epochs)
    print("guidance | checked | worst FD/floor (range) | " + " | ".join(spaces) + " | cond. acc. | drawn again")
    for g in args.guidance:
        for rounds in (0, args.rounds):
            rows, extra = [], 0
            for seed in range(args.seeds):
                codes, more = checked(
                    prior.model, classifier, args.n, prior.grid, labels, args.temperature, 100 + seed, g, rounds
                )
                extra += more
                rows.append(score(spaces, refs, decode_images(vq.model, codes), labels))
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            lo, hi = min(r["worst"] for r in rows), max(r["worst"] for r in rows)
            print(
                f"{guidance.label(g)} | {'yes' if rounds else 'no'} | {med['worst']:.2f}x ({lo:.2f}-{hi:.2f}) | "
                + " | ".join(f"{med[name]:.2f}x" for name in spaces)
                + f" | {med['acc']:.1%} | {extra / args.seeds / args.n:.1%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
