"""Training speed per stage against the device's own dense-matmul peak, and 10k-sample generation time.

    .venv/bin/python bench/train_speed.py [--device auto] [--batches 128,512] [--compile] [--steps 20]

First the yardstick: dense matmul GFLOP/s on this device, measured in this run (fp32 on CPU; fp32 and bf16 on
CUDA). Then, for each stage's default model (the VQ-VAE on MNIST images, the 64x8 gated PixelCNN on 7x7 maps of
K=128 codes), each precision (fp32; bf16 autocast too on CUDA, or with --bf16), eager and (with --compile, the CUDA
default) torch.compile, and each batch size: a full training step (forward, backward, Adam, and for the prior the
weight EMA) timed over --steps steps after warm-up. FLOPs per step are counted by torch's FlopCounterMode
(matmuls and convolutions, forward and backward), so "share of peak" = achieved FLOP/s / yardstick of the same
precision. Last: drawing 10,000 guided maps with the cached sampler (what `vqprior eval` does) and decoding them.
One line per configuration; on CPU these figures are the regression guard for the default path.

    .venv/bin/python bench/train_speed.py --bf16 --batches 128 --prior-shapes 64x8,64x7,64x6,48x8 --steps 30

times only the prior's training step for other gated PixelCNN shapes, alternating them over --rounds rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads  # noqa: E402

from vqprior import components  # noqa: E402
from vqprior.config import VQVAESection, prior_network  # noqa: E402
from vqprior.models.priors.base import generate  # noqa: E402
from vqprior.models.vqvae import build_vqvae, decode_images  # noqa: E402
from vqprior.optimizer import WeightEMA, scaled_lr  # noqa: E402
from vqprior.runtime.devices import resolve_device  # noqa: E402
from vqprior.stages.s1_vqvae import vqvae_step  # noqa: E402
from vqprior.stages.s3_prior import prior_step  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Dense matmul GFLOP/s: the best of repeated n x n products (n = 1024 on CPU, 8192 on CUDA)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def stage1_setup(device, batch):
    torch.manual_seed(0)
    model = build_vqvae(VQVAESection(), (1, 28, 28))[0].to(device).train()
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=scaled_lr(2e-3, batch))
    return model, opt, lambda fwd: fwd(model, model, images), None


def stage3_setup(device, batch, shape: tuple[int, int] | None = None):
    """shape: (channels, layers) of the gated PixelCNN instead of the default's."""
    torch.manual_seed(0)
    network = prior_network("gated_pixelcnn")
    if shape is not None:
        network.params.update(channels=shape[0], layers=shape[1])
    model = components.instantiate(components.resolve(network, codebook_size=128, num_classes=10)).to(device).train()
    codes = torch.randint(0, 128, (batch, 7, 7), device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    keep = torch.rand(batch, 1, device=device) >= 0.1
    opt = torch.optim.Adam(model.parameters(), lr=scaled_lr(3e-3, batch))
    ema = WeightEMA(model, 0.998)
    return model, opt, lambda fwd: fwd(model, model, codes, labels, keep), ema


def time_steps(setup, step_fn, device, batch, precision, compiled, steps) -> tuple[float, float]:
    """(seconds per training step, FLOPs per step)."""
    model, opt, call, ema = setup(device, batch)
    fwd = torch.compile(step_fn) if compiled else step_fn
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else torch.autocast(device.type, enabled=False)
    )

    def one():
        with autocast:
            loss = call(fwd)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(model)

    for _ in range(3):  # warm-up (and compilation)
        one()
    with FlopCounterMode(display=False) as counter:
        with autocast:
            loss = call(step_fn)["loss"]
        loss.backward()
    opt.zero_grad(set_to_none=True)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    sync(device)
    return (time.perf_counter() - t0) / steps, counter.get_total_flops()


def prior_shapes(spec: str) -> list[tuple[int, int]]:
    """ "64x8,48x8" -> [(64, 8), (48, 8)]; anything else is one argparse error line."""
    try:
        shapes = [(int(c), int(n)) for c, n in (s.split("x") for s in spec.split(","))]
    except ValueError:
        shapes = []
    if not shapes or min(min(s) for s in shapes) < 1:
        raise argparse.ArgumentTypeError(f"{spec!r}: give CHANNELSxLAYERS pairs of positive integers, e.g. 64x8,48x8")
    return shapes


def compare_shapes(shapes: list[tuple[int, int]], device, batch: int, precision: str, steps: int, rounds: int) -> None:
    """Maps/s of the prior's training step (eager) per network shape, alternating the shapes in each round (so a
    drift in the machine's speed falls on all of them), median over rounds and its ratio to the first shape's."""
    rates: dict[tuple, list[float]] = {s: [] for s in shapes}
    for _ in range(rounds):
        for shape in shapes:
            seconds, _ = time_steps(
                lambda d, b, shape=shape: stage3_setup(d, b, shape), prior_step, device, batch, precision, False, steps
            )
            rates[shape].append(batch / seconds)
    first = statistics.median(rates[shapes[0]])
    for shape, r in rates.items():
        print(
            f"gated PixelCNN {shape[0]} ch x {shape[1]} layers, {precision}, batch {batch}: {statistics.median(r):,.0f}"
            f" maps/s (rounds {', '.join(f'{x:,.0f}' for x in r)}) = {first / statistics.median(r):.2f}x the"
            f" {shapes[0][0]}x{shapes[0][1]} step time"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (the machines here have 2 cores)")
    ap.add_argument(
        "--batches", default=None, help="comma-separated batch sizes (default: 128,512 on CPU; 128,1024,4096 on CUDA)"
    )
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (on by default on CUDA)")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast (on by default on CUDA)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--prior-shapes",
        type=prior_shapes,
        default=None,
        help="comma-separated CHANNELSxLAYERS of the gated PixelCNN (e.g. 64x8,64x7,48x8): only the prior's training"
        " step is timed (eager), each shape in turn over --rounds rounds, at the first batch size and the last"
        " precision",
    )
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.rounds < 1 or args.steps < 1:
        ap.error("--rounds and --steps must be at least 1")
    device = resolve_device(args.device)
    threads = pin_threads(args.threads)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {threads} threads"
    batches = [int(b) for b in (args.batches or ("128,1024,4096" if cuda else "128,512")).split(",")]
    precisions = ["fp32", "bf16"] if (cuda or args.bf16) else ["fp32"]
    modes = [False, True] if (cuda or args.compile) else [False]
    print(f"device: {name}; torch {torch.__version__}")
    peak = {p: matmul_gflops(device, torch.float32 if p == "fp32" else torch.bfloat16) for p in precisions}
    print("yardstick, dense matmul: " + ", ".join(f"{p} {g:,.0f} GFLOP/s" for p, g in peak.items()))
    if args.prior_shapes:
        compare_shapes(args.prior_shapes, device, batches[0], precisions[-1], args.steps, args.rounds)
        return
    per_item = {
        "stage 1 VQ-VAE": ("images/s", stage1_setup, vqvae_step, 60_000),
        "stage 3 prior": ("maps/s", stage3_setup, prior_step, 60_000),
    }
    for stage, (unit, setup, step_fn, epoch_items) in per_item.items():
        for precision in precisions:
            for compiled in modes:
                for batch in batches:
                    try:
                        seconds, flops = time_steps(setup, step_fn, device, batch, precision, compiled, args.steps)
                    except Exception as e:  # noqa: BLE001 - a configuration that cannot run here is reported, not fatal
                        print(
                            f"{stage:15s} {precision} {'compiled' if compiled else 'eager':8s} batch {batch:5d}: failed ({type(e).__name__}: {str(e)[:100]})"
                        )
                        continue
                    achieved = flops / seconds / 1e9
                    print(
                        f"{stage:15s} {precision} {'compiled' if compiled else 'eager':8s} batch {batch:5d}: {batch / seconds:10,.0f} {unit}"
                        f" | {epoch_items / batch * seconds:6.2f} s per 60k epoch | {flops / batch / 1e6:6.2f} MFLOP per item"
                        f" | {achieved:8,.1f} GFLOP/s = {achieved / peak[precision]:5.1%} of {precision} matmul peak"
                    )
    prior = (
        components.instantiate(components.resolve(prior_network("gated_pixelcnn"), codebook_size=128, num_classes=10))
        .to(device)
        .eval()
    )
    vq = build_vqvae(VQVAESection(), (1, 28, 28))[0].to(device).eval()
    labels = torch.arange(10_000) % 10
    generate(prior, 100, (7, 7), labels[:100], guidance=1.5)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    codes = generate(prior, 10_000, (7, 7), labels, guidance=1.5)
    sync(device)
    t1 = time.perf_counter()
    decode_images(vq, codes)
    sync(device)
    t2 = time.perf_counter()
    print(
        f"generation: 10,000 guided 7x7 maps (cached sampler, batch 1000) {t1 - t0:.2f} s + decoding {t2 - t1:.2f} s = {t2 - t0:.2f} s"
    )


if __name__ == "__main__":
    main()
