"""`vqprior eval`, `report` and `runs`: how good a run is."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .. import guidance
from ..config import MAX_SEED, RunSection
from ..config_checks import check_sampling
from ..errors import UserError
from ..trust import trusting_code
from .common import (
    GUIDANCE_HELP,
    PIPED_WIDTH,
    ConsoleReporter,
    Device,
    Name,
    OutDir,
    Trust,
    _fail,
    _one_line_errors,
    _run_dir_of,
    app,
    console,
    guidance_flag,
)


@app.command("eval")
def eval_run(
    name: Name = None,
    out_dir: OutDir = "artifacts",
    n: Annotated[
        int,
        typer.Option(
            "--n",
            "-n",
            min=100,
            max=100_000,
            help="Samples to draw and score, at the training split's class frequencies.",
        ),
    ] = 10_000,
    temperature: Annotated[
        Optional[float], typer.Option(help="Sampling temperature (default: the run's sample.temperature).")
    ] = None,
    guidance: Annotated[
        Optional[str], typer.Option(help=f"The {GUIDANCE_HELP} (default: the run's sample.guidance).")
    ] = None,
    reference: Annotated[
        str, typer.Option(help="Score against the 'test' split, or the held-out 'valid' slice (for tuning).")
    ] = "test",
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Sampling seed.")] = 0,
    trust_code: Trust = False,
    device: Device = "auto",
) -> None:
    """Score a finished run: sample FD / floor, conditional accuracy, precision/recall, reconstruction, NLL.

    Writes <run>/eval/eval.json, eval/results/<setting>.json and the sheet of samples it scored, and prints one table.

    Example: vqprior eval --name mnist-pretrained --n 2000 --reference valid"""
    with _one_line_errors(), trusting_code(trust_code):
        if reference not in ("test", "valid"):
            raise UserError(f"--reference {reference!r}: choose test or valid")
        guidance = guidance_flag(guidance)
        check_sampling(temperature, guidance)
        from ..evaluation.run_eval import evaluate_run, setting_key, write_eval
        from ..evaluation.verdict import comparable, reasons
        from ..run_folder import RunFolder
        from ..runtime import Runtime

        run = RunFolder(_run_dir_of(name, out_dir))
        rt = Runtime.setup(RunSection(device=device))
        with run.lock():
            result, images = evaluate_run(
                run.path, n, temperature, reference, rt.device, ConsoleReporter(), seed, guidance
            )
            kept = run.evaluations()
            _, kept_because = write_eval(run, result, images, report=True)
        console.print(eval_table(result))
        for warning in result["warnings"]:
            console.print(f"[yellow]warning:[/] {escape(warning)}")
        key = f"{setting_key(result)}.json"
        if not comparable(result):
            console.print(f"[bold red]not comparable:[/] {escape('; '.join(reasons(result)))}", soft_wrap=True)
        if kept_because is not None:
            headline = run.evaluation()
            console.print(
                f"the headline stays the evaluation of {headline['n_samples']:,} samples "
                f"({headline['samples']['fd_ratio']:.2f}x, {run.eval_json}): {kept_because}; this one is in "
                f"{run.eval_results / key}",
                soft_wrap=True,
            )
        if key in kept:
            console.print(f"replaced this run's previous evaluation at the same setting ({run.eval_results / key})")
        others = len(set(kept) - {key})
        if others:
            console.print(f"kept {others} evaluation(s) at other settings in {run.eval_results}")
        console.print(f"[green]report[/] -> {run.report}")
        console.print(f"[green]eval done[/] in {result['seconds']:.0f}s -> {run.eval_json}")


def eval_table(result: dict):
    from rich.table import Table

    s, v, p, f = result["samples"], result["vqvae"], result["prior"], result["floor"]
    table = Table(
        title=f"{result['run']}: {result['n_samples']} samples at temperature {result['temperature']:g}, guidance "
        f"{guidance.read_label(result['guidance']) or '?'}, vs the {result['reference']} split"
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    from ..evaluation.verdict import comparable

    by_space = " · ".join(f"{k} {v['fd_ratio']:.2f}x" for k, v in result["spaces"].items())
    headline = (
        (
            "samples FD / floor",
            f"{s['fd_ratio']:.2f}x",
            f"worst of {len(result['spaces'])} feature spaces ({by_space}); floor = {f['real_images']} real vs real",
        )
        if comparable(result)
        else ("samples FD / floor", "not comparable", "no headline: the reasons follow the table")
    )
    rows = [
        headline,
        (
            "KID x 1000",
            " / ".join(f"{v['kid'] * 1000:.2f}" for v in result["spaces"].values()),
            "per space, unbiased (real vs real: "
            + " / ".join(f"{v['floor_kid'] * 1000:.2f}" for v in result["spaces"].values())
            + ")",
        ),
    ]
    if "conditional_accuracy" in s:
        worst = min(s["per_class_accuracy"].items(), key=lambda kv: kv[1])
        rows.append(
            (
                "conditional accuracy",
                f"{s['conditional_accuracy']:.1%}",
                f"samples read as their class; worst: {worst[0]} {worst[1]:.1%}",
            )
        )
    else:
        rows.append(
            (
                "class coverage",
                f"{s['class_coverage']:.3f}",
                "entropy of predicted classes / log C; 1 = all classes equally",
            )
        )
    rows += [
        (
            "precision / recall",
            f"{s['precision']:.3f} / {s['recall']:.3f}",
            "samples inside the real manifold / real inside the samples'",
        ),
        ("reconstruction FD / floor", f"{v['recon_fd_ratio']:.2f}x", "the VQ-VAE's ceiling on samples (worst space)"),
        ("test recon MSE / PSNR", f"{v['test_recon_mse']:.4f} / {v['test_psnr']:.1f} dB", "pixels in [0, 1]"),
        (
            "codebook",
            f"{v['usage']:.0%} of {v['codebook_size']}, ppl {v['perplexity']:.1f}",
            f"{v['dead_codes']} dead codes on the test split",
        ),
        ("prior test NLL", f"{p['test_bits_per_code']:.3f} bits/code", f"{p['test_bits_per_map']:.1f} bits per map"),
        (
            "image NLL bound",
            f"{p['image_nll_bound_bits_per_dim']:.3f} bits/dim",
            f"prior + decoder (discretised Gaussian, sigma {p['decoder_sigma']:.3f})",
        ),
        (
            "feature networks",
            " / ".join(f"{i['test_accuracy']:.2%}" for i in result["feature_nets"].values()),
            f"their accuracy on the real test split ({', '.join(result['feature_nets'])})",
        ),
    ]
    for row in rows:
        table.add_row(*row)
    return table


@app.command("report")
def report(name: Name = None, out_dir: OutDir = "artifacts") -> None:
    """Write <run>/report.html: config, timings, curves, pictures, GIFs and the eval table, in one file.

    Example: vqprior report --name mnist-pretrained"""
    with _one_line_errors():
        from ..report.html import write_report

        path = write_report(_run_dir_of(name, out_dir, stage=1))
        console.print(f"[green]report[/] -> {path}")


@app.command("runs")
def runs(out_dir: OutDir = "artifacts") -> None:
    """List every run under the output folder with its headline numbers side by side.

    Example: vqprior runs --out-dir artifacts"""
    from rich.table import Table

    from ..report.runs import collect_runs

    try:
        rows = collect_runs(Path(out_dir))
    except OSError as e:
        _fail(f"cannot list {out_dir}: {e.strerror}; make it readable", 2)
    if not rows:
        _fail(f"no runs under {out_dir}; run `vqprior run` first", 2)
    table = Table(title=f"runs in {out_dir}")
    for col in (
        "run",
        "K",
        "bits/map",
        "FD / floor",
        "cond. acc.",
        "recon FD / floor",
        "eval: n · t · g",
        "wall time",
    ):
        table.add_column(col, justify="left" if col == "run" else "right")
    console_ = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else PIPED_WIDTH)
    for r in rows:
        table.add_row(*r[:-1])
    console_.print(table)
    for r in rows:
        if r[-1] != "-":
            console_.print(f"{r[0]}: {r[-1]}", soft_wrap=True)
