"""The prior kinds side by side on the same codes, at equal training time (and multiples of it), measured in one run.

    .venv/bin/python bench/prior_kinds.py [--run artifacts/mnist] [--seconds S] [--budgets 1,2] [--kinds gated_pixelcnn,row_lstm,diagonal_bilstm,transformer]

Stages 1 and 2 of --run (a finished default run) are copied into artifacts/kinds/<kind>, so every kind trains
on the very same code maps. Each kind's training speed is timed on 30 batches first; its epoch count is then the
whole number of epochs nearest to --seconds (default: the training seconds of --run's stage 3, so with a default
run the gated PixelCNN row is that run again). Then stage 3 and `vqprior eval` (10,000 samples against the test
split). One line per kind: parameters, seconds per epoch, epochs, stage-3 wall time, test bits per map, sample
FD / floor, conditional accuracy (worst class), seconds to sample 10,000 maps with the exact sampler, and that
sampler's cost for 1,000 maps in teacher-forced forward passes over them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads  # noqa: E402

from vqprior import components  # noqa: E402
from vqprior.artifacts import load_json  # noqa: E402
from vqprior.codes import load_code_maps  # noqa: E402
from vqprior.config_files import load_config  # noqa: E402
from vqprior.evaluation.run_eval import evaluate_run  # noqa: E402
from vqprior.optimizer import scaled_lr  # noqa: E402
from vqprior.registry import names as registry_names  # noqa: E402
from vqprior.run_folder import RunFolder  # noqa: E402
from vqprior.runtime import Runtime  # noqa: E402
from vqprior.stages import s3_prior  # noqa: E402


def seconds_per_epoch(
    cfg, codes: torch.Tensor, labels: torch.Tensor | None, num_classes: int, codebook_size: int
) -> tuple[float, int]:
    """Training time of one epoch, from 30 timed batches (after 5 warm-up batches) of the real codes; parameters."""
    torch.manual_seed(0)
    model = components.instantiate(
        components.resolve(cfg.prior.network, codebook_size=codebook_size, num_classes=num_classes)
    )
    batch = cfg.prior.batch_size
    opt = torch.optim.Adam(model.parameters(), lr=scaled_lr(cfg.prior.lr, batch))
    for step in range(35):
        if step == 5:
            started = time.perf_counter()
        x = codes[step * batch : (step + 1) * batch]
        y = None if labels is None else labels[step * batch : (step + 1) * batch]
        loss = F.cross_entropy(model(x, y), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_batch = (time.perf_counter() - started) / 30
    return per_batch * -(-len(codes) // batch), sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="artifacts/mnist", help="a finished run whose stages 1 and 2 are shared")
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="stage-3 training budget per kind (default: the training seconds of --run's own stage 3)",
    )
    ap.add_argument("--kinds", default=",".join(registry_names("prior")))
    ap.add_argument("--budgets", default="1", help="multiples of --seconds to train each kind for, e.g. 1,2")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="artifacts/kinds")
    args = ap.parse_args()
    source = RunFolder(args.run)
    stage2 = load_json(source.manifest_file(2))
    train = load_code_maps(source.stage(2), stage2, "train")
    codes, labels = train.tensors(torch.device("cpu"))
    num_classes = len(stage2["class_names"]) if stage2.get("class_names") else 0
    if args.seconds is None:
        args.seconds = sum(e["train_seconds"] for e in load_json(source.metrics_file(3))["epochs"])
    print(
        f"# threads={pin_threads(args.threads)} torch {torch.__version__}; codes of {source.path}; {args.seconds:.0f} s of "
        f"stage-3 training per kind; {args.n} samples vs the test split",
        flush=True,
    )
    base_seconds = args.seconds
    for kind, budget in ((k, float(b)) for b in args.budgets.split(",") for k in args.kinds.split(",")):
        args.seconds = base_seconds * budget
        run_dir = Path(args.out) / (kind if budget == 1 else f"{kind}-x{budget:g}")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        for stage in (1, 2):
            shutil.copytree(source.stage(stage), RunFolder(run_dir).stage(stage))
        cfg = load_config(
            overrides=[
                f"prior.kind={kind}",
                f'run.out_dir="{args.out}"',
                f'run.name="{run_dir.name}"',
                'run.device="cpu"',
            ]
        )
        per_epoch, n_params = seconds_per_epoch(cfg, codes, labels, num_classes, stage2["codebook_size"])
        cfg.prior.epochs = max(1, round(args.seconds / per_epoch))  # the nearest whole number of epochs
        started = time.perf_counter()
        s3_prior.run(cfg, rt=Runtime.setup(cfg.run))
        stage3_seconds = time.perf_counter() - started
        trained = sum(e["train_seconds"] for e in load_json(RunFolder(run_dir).metrics_file(3))["epochs"])
        ev, _ = evaluate_run(run_dir, args.n, cfg.sample.temperature, "test", seed=0, guidance=cfg.sample.guidance)
        s = ev["samples"]
        worst = (
            min(s["per_class_accuracy"].items(), key=lambda kv: kv[1])
            if "per_class_accuracy" in s
            else ("-", float("nan"))
        )
        params = cfg.prior.network.params
        ratio = cached_over_forward(run_dir)
        print(
            f"{kind} (budget x{budget:g}): {', '.join(f'{k}={v}' for k, v in params.items())}"
            + f" ({n_params / 1e6:.2f}M parameters)"
            + f" | {per_epoch:.0f} s/epoch -> {cfg.prior.epochs} epochs: {trained:.0f} s training, stage 3 {stage3_seconds:.0f} s"
            f" | test {ev['prior']['test_bits_per_map']:.1f} bits/map | samples FD/floor {s['fd_ratio']:.2f}"
            f" | cond acc {s.get('conditional_accuracy', float('nan')):.1%} (worst {worst[0]} {worst[1]:.1%})"
            f" | sampling {args.n} maps {s['seconds']:.1f} s (guidance {ev['guidance']:g}; cached sampler = {ratio:.2f} forward passes)",
            flush=True,
        )


def cached_over_forward(run_dir: Path, batch: int = 1000) -> float:
    """Time of the exact cached sampler for `batch` maps over the time of one teacher-forced forward pass on them."""
    from vqprior.models.priors.base import sample
    from vqprior.restore import load_prior

    prior = load_prior(run_dir, None, torch.device("cpu"))
    labels = torch.arange(batch) % prior.model.num_classes if prior.model.num_classes else None
    codes = sample(prior.model, batch, prior.grid, labels, seed=0)
    with torch.no_grad():
        prior.model(codes, labels)
        t0 = time.perf_counter()
        prior.model(codes, labels)
        forward = time.perf_counter() - t0
    t0 = time.perf_counter()
    sample(prior.model, batch, prior.grid, labels, seed=1)
    return (time.perf_counter() - t0) / forward


if __name__ == "__main__":
    main()
