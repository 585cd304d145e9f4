"""The `vqprior` command. It owns the console: progress bars, one line per epoch, one line per error."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .config import MAX_SEED, Config, RunSection, check_sampling, load_config, presets, validate_run_name
from .errors import UserError, os_error_message
from .reporter import Reporter
from .trust import trusting_code

T = TypeVar("T")
RESUMABLE = {1, 3}
STAGE_MODULES = {
    1: "vqprior.stages.s1_vqvae",
    2: "vqprior.stages.s2_codes",
    3: "vqprior.stages.s3_prior",
    4: "vqprior.stages.s4_sample",
}

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, highlight=False)


def _print_version(value: bool) -> None:
    if value:
        from .version import __version__

        print(f"vqprior {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and stop.")
    ] = False,
) -> None:
    """Train a VQ-VAE and a prior over its codes (a gated PixelCNN by default), then generate images.

    Stages 1-4 run in order. Start with `vqprior pretrained mnist` (no training) or `vqprior run` (the whole
    pipeline on MNIST)."""


class ConsoleReporter(Reporter):
    def log(self, message: str) -> None:
        console.print(message)

    def track(self, items: Iterable[T], total: int, description: str) -> Iterator[T]:
        if not console.is_terminal:  # piped or logged: a plain line every tenth (at most every 30 s), no bar
            yield from self._plain(items, total, description)
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task)

    @staticmethod
    def _plain(items: Iterable[T], total: int, description: str) -> Iterator[T]:
        start = last = time.perf_counter()
        step = max(1, total // 10)
        for done, item in enumerate(items, 1):
            yield item
            now = time.perf_counter()
            if done % step == 0 or done == total or now - last >= 30:
                last = now
                console.print(f"  {description}: {done}/{total} ({now - start:.0f} s)", highlight=False)


def _fail(message: str, code: int = 2) -> None:
    one_line = " ".join(message.split())
    rank = os.environ.get("RANK", "0")
    where = f"[rank {rank}] " if rank.isdigit() and int(rank) else ""  # under torchrun: which process
    console.print(f"[bold red]error:[/] {where}{escape(one_line)}", soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _one_line_errors(interrupted: str = "interrupted; nothing was written") -> Iterator[None]:
    """A user's mistake, Ctrl-C, a full disk or a permission problem ends the command with one line and a non-zero exit."""
    try:
        yield
    except UserError as e:
        _fail(str(e), getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        _fail(interrupted, 130)
    except OSError as e:
        message = os_error_message(e)
        if message is None:
            raise
        _fail(message)


def _flag_values(
    name: Optional[str],
    labels: list[int],
    mix: Optional[str],
    n: Optional[int],
    temperature: Optional[float],
    seed: Optional[int],
    sampler: Optional[str],
    guidance: Optional[float] = None,
) -> dict:
    """The command's own flags as config values (a layer applied after --set, so a flag wins), validated with the
    rest of the config."""
    run, sample = {}, {}
    if name is not None:
        run["name"] = name
    if labels:
        sample["labels"] = list(labels)
    if mix is not None:
        try:
            sample["mix"] = {str(int(c)): float(w) for c, w in (item.split(":") for item in mix.split(","))}
        except ValueError:
            raise UserError(f"--mix {mix!r}: expected class:weight pairs, e.g. --mix 3:0.5,8:0.5") from None
    for key, value in (("per_class", n), ("temperature", temperature), ("seed", seed), ("guidance", guidance)):
        if value is not None:
            sample[key] = value
    if sampler is not None:
        sample["sampler"] = sampler
    return {k: v for k, v in (("run", run), ("sample", sample)) if v}


Preset = Annotated[Optional[str], typer.Option(help=f"Start from a preset: {', '.join(presets())}.")]
ConfigFile = Annotated[Optional[str], typer.Option("--config", "-c", help="TOML file with config overrides.")]
Sets = Annotated[
    list[str], typer.Option("--set", "-s", help="Override one value, e.g. --set prior.epochs=2 (repeatable).")
]
Name = Annotated[
    Optional[str],
    typer.Option(help="Run name: outputs go to <run.out_dir>/<name>/ (default: the data source, e.g. mnist)."),
]
Labels = Annotated[
    list[int], typer.Option("--label", "-l", help="Stage 4: class to draw (repeatable; default all classes).")
]
Mix = Annotated[Optional[str], typer.Option(help="Stage 4: draw between classes, e.g. --mix 3:0.5,8:0.5.")]
PerClass = Annotated[
    Optional[int], typer.Option("--per-class", help="Stage 4: images per requested class (strips for --morph).")
]
Temp = Annotated[Optional[float], typer.Option(help="Stage 4: sampling temperature (> 0).")]
Guidance = Annotated[Optional[float], typer.Option(help="Stage 4: classifier-free guidance scale (1 = none).")]
Morph = Annotated[
    Optional[str], typer.Option(help="Stage 4: strips that move from one class to another, e.g. --morph 4:9.")
]
Steps = Annotated[Optional[int], typer.Option(help="Stage 4: steps of a --morph strip.")]
Seed = Annotated[Optional[int], typer.Option(help="Stage 4: sampling seed.")]
Trust = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help="Allow components that are not vqprior built-ins (a dotted or file path in the "
        "config or run folder): their code runs as you. Only for code you trust.",
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted training stage (the default when a checkpoint exists); fails if there is none.",
    ),
]
Restart = Annotated[bool, typer.Option("--restart", help="Discard checkpoints and redo the stage(s) from scratch.")]
Sampler = Annotated[Optional[str], typer.Option(help="Stage 4: cached (fast, default) or naive (reference).")]


def _stage(stage: int):
    return importlib.import_module(STAGE_MODULES[stage])


def finished_stage(run_dir: Path, stage: int) -> dict | None:
    """The manifest of a finished stage in the run folder (not re-verified), or None."""
    from .artifacts import load_json_object

    path = run_dir / f"stage{stage}" / "manifest.json"
    if not path.is_file():
        return None
    try:
        return load_json_object(path)
    except UserError:
        return {}


def _changes(old, new, prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two fingerprints."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            c for k in sorted(set(old) | set(new), key=str) for c in _changes(old.get(k), new.get(k), f"{prefix}{k}.")
        ]
    if old == new:
        return []
    shown = lambda v: json.dumps(v) if len(json.dumps(v)) <= 30 else json.dumps(v)[:27] + "..."  # noqa: E731
    return [f"{prefix[:-1]} {shown(old)} -> {shown(new)}"]


def check_nothing_finished_is_replaced(run_dir: Path, cfg: Config) -> None:
    """`vqprior run` with other settings than the finished training stages in its folder would retrain them there and
    replace minutes of work: refused in one line that says what differs and how to keep or replace it."""
    from .artifacts import STAGE_NAMES

    for stage in (1, 3):
        old = finished_stage(run_dir, stage)
        if not old or "fingerprint" not in old:
            continue
        new = _stage(stage).fingerprint(cfg)
        if new is None:  # stage 2's codes are missing: the prior is stale whatever the settings
            continue
        new = json.loads(json.dumps(new))
        changes = [c for c in _changes(old["fingerprint"], new) if not c.startswith("codes.")]
        if changes:
            what = (
                "the VQ-VAE (stage 1) and the prior (stage 3)"
                if stage == 1 and finished_stage(run_dir, 3)
                else f"the {STAGE_NAMES[stage]} (stage {stage})"
            )
            raise UserError(
                f"{run_dir} holds a finished {STAGE_NAMES[stage]} made with other settings ({'; '.join(changes[:4])}"
                f"{'; ...' if len(changes) > 4 else ''}); this run would replace {what}: pass --name NEW to keep it "
                f"and train elsewhere, or --replace to retrain in this folder"
            )


def _run_stages(stages: list[int], cfg: Config, resume: str, incremental: bool, replace: bool = False) -> None:
    from .artifacts import STAGE_NAMES, is_current, run_lock
    from .runtime import Runtime

    rt = Runtime.setup(cfg.run)
    reporter = ConsoleReporter() if rt.is_main else Reporter()
    run_dir = cfg.run_dir()
    with run_lock(run_dir) if rt.is_main else contextlib.nullcontext():
        rt.barrier()  # under torchrun the other processes wait until rank 0 holds the run folder
        if incremental and resume == "require":
            if not list((run_dir / ".checkpoints").glob("stage*.pt")):
                raise UserError(f"--resume: no interrupted stage to resume in {run_dir}; run without --resume")
            resume = "auto"
        if incremental and resume != "restart" and not replace:
            check_nothing_finished_is_replaced(run_dir, cfg)
        for stage in stages:
            module = _stage(stage)
            if incremental and resume != "restart" and is_current(run_dir, stage, module.fingerprint(cfg)):
                if rt.is_main:
                    console.print(
                        f"[green]stage {stage} up to date[/] ({run_dir / f'stage{stage}'}); skipped (--restart redoes it)"
                    )
                continue
            old = finished_stage(run_dir, stage) if rt.is_main else None
            t0 = time.perf_counter()
            kwargs = {"resume": resume} if stage in RESUMABLE else {}
            out = module.run(cfg, reporter=reporter, rt=rt, **kwargs)
            if rt.is_main:
                replaced = (
                    f" (replaced the {STAGE_NAMES[stage]} made {old.get('created', '?')})" if old is not None else ""
                )
                console.print(
                    f"[green]stage {stage} done[/] in {time.perf_counter() - t0:.0f}s -> {out}{replaced}",
                    soft_wrap=True,
                )
        if incremental and rt.is_main:
            from .report.html import write_report

            evaluated = (run_dir / "eval" / "eval.json").is_file()
            note = (
                "with the last evaluation's numbers: `vqprior eval` again to score these stages"
                if evaluated
                else "`vqprior eval` adds the quality numbers"
            )
            console.print(f"[green]report[/] -> {write_report(run_dir)} ({note})")


def _terminate(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C: temporary stage folders and the run lock are cleaned up on the way out
    raise KeyboardInterrupt


def _guarded(
    stages: list[int],
    preset,
    config,
    sets,
    name,
    labels,
    mix,
    n,
    temperature,
    seed,
    sampler,
    resume,
    restart,
    incremental: bool = False,
    guidance: Optional[float] = None,
    trust_code: bool = False,
    replace: bool = False,
) -> None:
    from .runtime import lost_peer, process_place

    previous = (
        signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        with (
            _one_line_errors(
                "interrupted; the stage that was running left its last checkpoint (if any) and wrote no outputs"
            ),
            trusting_code(trust_code),
        ):
            if resume and restart:
                raise UserError("--resume and --restart contradict each other; pass one")
            cfg = load_config(
                preset, config, sets, values=_flag_values(name, labels, mix, n, temperature, seed, sampler, guidance)
            )
            try:
                _run_stages(
                    stages, cfg, "require" if resume else "restart" if restart else "auto", incremental, replace
                )
            except RuntimeError as e:  # under torchrun: another process died or hung -> one line on every survivor
                rank, world, _, _ = process_place()
                if world > 1 and (lost := lost_peer(e, rank)) is not None:
                    raise lost from None
                raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


RunOutDir = Annotated[
    Optional[str], typer.Option("--out-dir", help="Folder that holds the runs (run.out_dir; default artifacts).")
]


def _with_out_dir(sets: list[str], out_dir: Optional[str]) -> list[str]:
    """--out-dir as the run.out_dir override it stands for (last, so it wins over --set like any flag)."""
    return sets if out_dir is None else [*sets, f"run.out_dir={json.dumps(out_dir)}"]


@app.command("run-stage")
def run_stage(
    stage: Annotated[int, typer.Argument(min=1, max=4, help="1 VQ-VAE, 2 code maps, 3 prior, 4 samples.")],
    preset: Preset = None,
    config: ConfigFile = None,
    set_: Sets = [],
    name: Name = None,
    label: Labels = [],
    mix: Mix = None,
    per_class: PerClass = None,
    temperature: Temp = None,
    seed: Seed = None,
    sampler: Sampler = None,
    guidance: Guidance = None,
    morph: Morph = None,
    steps: Steps = None,
    resume: Resume = False,
    restart: Restart = False,
    trust_code: Trust = False,
    out_dir: RunOutDir = None,
) -> None:
    """Run one stage; it reads the earlier stages' outputs from the run folder.

    Example: vqprior run-stage 4 --label 3 --label 7 --per-class 8"""
    if stage != 4 and (
        label
        or mix
        or per_class is not None
        or temperature is not None
        or seed is not None
        or sampler is not None
        or guidance is not None
        or morph is not None
        or steps is not None
    ):
        _fail(
            "--label/--mix/--per-class/--temperature/--seed/--sampler/--guidance/--morph/--steps apply to stage 4 only; use --set for other stages"
        )
    if morph is not None:
        try:
            a, b = (int(c) for c in morph.split(":"))
        except ValueError:
            _fail(f"--morph {morph!r}: expected two classes, e.g. --morph 4:9")
        set_ = [*set_, f"sample.morph=[{a}, {b}]"] + ([f"sample.morph_steps={steps}"] if steps is not None else [])
    elif steps is not None:
        _fail("--steps goes with --morph")
    if stage not in RESUMABLE and (resume or restart):
        _fail(f"--resume/--restart apply to the training stages 1 and 3; stage {stage} always runs from the start")
    _guarded(
        [stage],
        preset,
        config,
        _with_out_dir(set_, out_dir),
        name,
        label,
        mix,
        per_class,
        temperature,
        seed,
        sampler,
        resume,
        restart,
        guidance=guidance,
        trust_code=trust_code,
    )


@app.command("run")
def run_all(
    preset: Preset = None,
    config: ConfigFile = None,
    set_: Sets = [],
    name: Name = None,
    label: Labels = [],
    mix: Mix = None,
    per_class: PerClass = None,
    temperature: Temp = None,
    seed: Seed = None,
    sampler: Sampler = None,
    guidance: Guidance = None,
    resume: Resume = False,
    restart: Restart = False,
    trust_code: Trust = False,
    out_dir: RunOutDir = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Retrain finished stages whose settings changed in this run "
            "folder (without it such a run is refused: it would replace them).",
        ),
    ] = False,
) -> None:
    """Run all four stages in order (the whole pipeline on MNIST with the defaults).

    Like make: a stage whose outputs are intact and were made from the same settings and inputs is skipped,
    an interrupted one resumes from its checkpoint; --restart redoes everything. A finished VQ-VAE or prior made
    with other settings is never replaced silently: pass --name for a new folder or --replace.

    Example: vqprior run --preset quick --name quick"""
    _guarded(
        [1, 2, 3, 4],
        preset,
        config,
        _with_out_dir(set_, out_dir),
        name,
        label,
        mix,
        per_class,
        temperature,
        seed,
        sampler,
        resume,
        restart,
        incremental=True,
        guidance=guidance,
        trust_code=trust_code,
        replace=replace,
    )


def _run_dir_of(name: Optional[str], out_dir: str) -> Path:
    if name is not None:
        validate_run_name(name)  # the same rules as run.name
    run_dir = Path(out_dir) / (name or "mnist")
    if not (run_dir / "stage1").is_dir():
        raise UserError(f"no finished run in {run_dir}; run `vqprior run` first (or pass --name / --out-dir)")
    return run_dir


OutDir = Annotated[str, typer.Option("--out-dir", help="Folder that holds the runs.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda or cuda:N.")]


@app.command("eval")
def eval_run(
    name: Name = None,
    out_dir: OutDir = "artifacts",
    n: Annotated[
        int,
        typer.Option(
            "--n", "-n", min=100, max=100_000, help="Samples to draw and score in all, spread evenly over classes."
        ),
    ] = 10_000,
    temperature: Annotated[
        Optional[float], typer.Option(help="Sampling temperature (default: the run's sample.temperature).")
    ] = None,
    guidance: Annotated[
        Optional[float], typer.Option(help="Guidance scale (default: the run's sample.guidance).")
    ] = None,
    reference: Annotated[
        str, typer.Option(help="Score against the 'test' split, or the held-out 'valid' slice (for tuning).")
    ] = "test",
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Sampling seed.")] = 0,
    trust_code: Trust = False,
    device: Device = "auto",
) -> None:
    """Score a finished run: sample FD / floor, conditional accuracy, precision/recall, reconstruction, NLL.

    Writes <run>/eval/eval.json, eval/results/<setting>.json and the sample grid it scored, and prints one table.

    Example: vqprior eval --name mnist-pretrained --n 2000 --reference valid"""
    with _one_line_errors(), trusting_code(trust_code):
        if reference not in ("test", "valid"):
            raise UserError(f"--reference {reference!r}: choose test or valid")
        check_sampling(temperature, guidance)
        from .artifacts import run_lock
        from .evaluation.run_eval import evaluate_run, previous_results, setting_key, write_eval
        from .runtime import Runtime

        run_dir = _run_dir_of(name, out_dir)
        rt = Runtime.setup(RunSection(device=device))
        with run_lock(run_dir):
            result, images = evaluate_run(
                run_dir, n, temperature, reference, rt.device, ConsoleReporter(), seed, guidance
            )
            kept = previous_results(run_dir)
            folder = write_eval(run_dir, result, images, report=True)
        console.print(eval_table(result))
        for warning in result["warnings"]:
            console.print(f"[yellow]warning:[/] {warning}")
        key = f"{setting_key(result)}.json"
        if key in kept:
            console.print(f"replaced this run's previous evaluation at the same setting (eval/results/{key})")
        others = len(set(kept) - {key})
        if others:
            console.print(f"kept {others} evaluation(s) at other settings in {folder / 'results'}")
        console.print(f"[green]report[/] -> {run_dir / 'report.html'}")
        console.print(f"[green]eval done[/] in {result['seconds']:.0f}s -> {folder / 'eval.json'}")


def eval_table(result: dict):
    from rich.table import Table

    s, v, p, f = result["samples"], result["vqvae"], result["prior"], result["floor"]
    table = Table(
        title=f"{result['run']}: {result['n_samples']} samples at temperature {result['temperature']:g}, guidance "
        f"{result['guidance']:g}, vs the {result['reference']} split"
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    by_space = " · ".join(f"{k} {v['fd_ratio']:.2f}x" for k, v in result["spaces"].items())
    rows = [
        (
            "samples FD / floor",
            f"{s['fd_ratio']:.2f}x",
            f"worst of {len(result['spaces'])} feature spaces ({by_space}); floor = {f['real_images']} real vs real",
        ),
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
        from .report.html import write_report

        path = write_report(_run_dir_of(name, out_dir))
        console.print(f"[green]report[/] -> {path}")


@app.command("runs")
def runs(out_dir: OutDir = "artifacts") -> None:
    """List every run under the output folder with its headline numbers side by side.

    Example: vqprior runs --out-dir artifacts"""
    from rich.table import Table

    from .report.runs import collect_runs

    try:
        rows = collect_runs(Path(out_dir))
    except OSError as e:
        _fail(f"cannot list {out_dir}: {e.strerror}; make it readable", 2)
    if not rows:
        _fail(f"no runs under {out_dir}; run `vqprior run` first", 2)
    table = Table(title=f"runs in {out_dir}")
    for col in ("run", "K", "bits/map", "FD / floor", "cond. acc.", "recon FD / floor", "eval n · t · g", "wall time"):
        table.add_column(col, justify="left" if col == "run" else "right")
    console_ = Console(highlight=False)
    for r in rows:
        table.add_row(*r[:-1])
    console_.print(table)
    for r in rows:
        if r[-1] != "-":
            console_.print(f"{r[0]}: {r[-1]}", soft_wrap=True)


Inputs = Annotated[Optional[list[str]], typer.Argument(help="Image files, folders or .npz files (key 'images').")]
FromSplit = Annotated[Optional[str], typer.Option("--from", help="Use the run's own images instead: train or test.")]
FromN = Annotated[int, typer.Option("--n", "-n", min=1, help="With --from: how many images.")]


def _inputs(run, inputs, from_split, n):
    from .inputs import read_inputs

    notices: list[str] = []
    out = read_inputs(inputs or [], from_split, n, run.image_shape, lambda: run.data, notices)
    for notice in notices:
        console.print(f"[yellow]notice:[/] {escape(notice)}")
    return out


def _api_command(body, trust_code: bool = False) -> None:
    with _one_line_errors(), trusting_code(trust_code):
        body()


@app.command("complete")
def complete(
    inputs: Inputs = None,
    name: Name = None,
    out_dir: OutDir = "artifacts",
    from_split: FromSplit = None,
    n: FromN = 8,
    keep_rows: Annotated[
        Optional[int], typer.Option(help="Code-map rows to keep from the top (default: half); exact.")
    ] = None,
    keep: Annotated[
        Optional[str], typer.Option("--keep", help="Keep one half: top (exact), bottom, left or right.")
    ] = None,
    keep_mask: Annotated[
        Optional[Path],
        typer.Option(help="Black/white picture, the image's size or the code map's: white = kept."),
    ] = None,
    erase: Annotated[
        Optional[str], typer.Option(help="Erase a box x0,y0,x1,y1 (pixels, end exclusive) and fill it in.")
    ] = None,
    sweeps: Annotated[int, typer.Option(min=0, max=100, help="MCMC sweeps for a region that is not a top prefix.")] = 4,
    samples: Annotated[int, typer.Option(min=1, max=64, help="Completions per image.")] = 4,
    label: Annotated[
        Optional[int], typer.Option(help="Class to complete as (default: inferred from the kept rows).")
    ] = None,
    temperature: Annotated[
        Optional[float], typer.Option(help="Sampling temperature (> 0; default: the run's sample.temperature).")
    ] = None,
    guidance: Annotated[
        Optional[float],
        typer.Option(help="Classifier-free guidance scale (1 = none; default: the run's sample.guidance)."),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Sampling seed.")] = 0,
    trust_code: Trust = False,
    device: Device = "auto",
) -> None:
    """Keep part of each image and sample the rest: original | kept part | completions, one row per image.

    The top rows (--keep-rows, --keep top) are continued exactly; any other region (--keep bottom/left/right,
    --keep-mask, --erase) is filled by Metropolis-Hastings over the prior's exact likelihood (--sweeps rounds).

    Example: vqprior complete --from test --n 4 --erase 8,12,20,20"""

    def body():
        from torchvision.utils import save_image

        from .api import load
        from .artifacts import writing_folder

        check_sampling(temperature, guidance)
        given = [v for v in (keep_rows, keep, keep_mask, erase) if v is not None]
        if len(given) > 1:
            raise UserError("give one of --keep-rows, --keep, --keep-mask, --erase")
        run = load(_run_dir_of(name, out_dir), device, trust_code=trust_code)
        images, _, names = _inputs(run, inputs, from_split, n)
        region = keep
        if keep_mask is not None:
            from .datasets.pixels import read_image

            pixels, _ = read_image(keep_mask, 1)
            region = pixels[..., 0] if pixels.ndim == 3 else pixels
        elif erase is not None:
            from .masks import erase_box

            region = erase_box(erase, tuple(run.image_shape[1:]))
        done = run.complete(images, keep_rows, samples, label, temperature, guidance, seed, keep=region, sweeps=sweeps)
        rows = done.panels().flatten(0, 1)
        with writing_folder(run.folder / "complete", "completions") as out:
            save_image(rows.float() / 255, out / "completions.png", nrow=samples + 2, padding=2, pad_value=0.5)
            extra = (
                {} if done.posterior is None else {"posterior": done.posterior.numpy(), "labels": done.labels.numpy()}
            )
            np.savez_compressed(
                out / "completions.npz",
                originals=done.originals.numpy(),
                images=done.images.numpy(),
                codes=done.codes.numpy(),
                keep=done.keep.numpy(),
                **extra,
            )
        how = "exact: a kept prefix" if done.exact else f"MCMC, {sweeps} sweeps"
        for i, who in enumerate(names):
            if done.posterior is not None:
                top = done.posterior[i].topk(min(3, run.num_classes))
                guess = ", ".join(
                    f"{run.class_names[c]} {p:.0%}" for p, c in zip(top.values.tolist(), top.indices.tolist())
                )
                console.print(f"{who}: class posterior from the kept part: {guess}")
        kept = int(done.keep[0].sum())
        console.print(
            f"[green]completions[/] ({kept} of {run.grid[0] * run.grid[1]} codes kept in the first image; {how}) "
            f"-> {run.folder / 'complete' / 'completions.png'}"
        )

    _api_command(body, trust_code)


@app.command("score")
def score(
    inputs: Inputs = None,
    name: Name = None,
    out_dir: OutDir = "artifacts",
    from_split: FromSplit = None,
    n: FromN = 1000,
    trust_code: Trust = False,
    device: Device = "auto",
) -> None:
    """Per image: bits of its codes under the prior, best class, reconstruction error, image-level bound (CSV, JSON, histogram).

    Example: vqprior score --from test --n 100"""

    def body():
        import csv

        from .api import load
        from .artifacts import save_json, writing_folder
        from .report.plots import histogram

        run = load(_run_dir_of(name, out_dir), device, trust_code=trust_code)
        images, _, names = _inputs(run, inputs, from_split, n)
        result = run.score(images)
        with writing_folder(run.folder / "score", "scores") as out:
            with open(out / "scores.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["input", "code_bits", "best_class", "recon_mse", "image_bits_bound"])
                for i, who in enumerate(names):
                    best = int(result["best_class"][i])
                    writer.writerow(
                        [
                            who,
                            f"{result['code_bits'][i]:.3f}",
                            run.class_names[best] if best >= 0 else "",
                            f"{result['recon_mse'][i]:.6f}",
                            f"{result['image_bits_bound'][i]:.2f}",
                        ]
                    )
            save_json(out / "scores.json", {"inputs": names, **{k: v.tolist() for k, v in result.items()}})
            (out / "histogram.png").write_bytes(
                histogram(result["code_bits"].tolist(), "bits of each input's code map", "bits")
            )
        bits = result["code_bits"]
        console.print(
            f"{len(names)} inputs: code bits median {bits.median():.1f} (min {bits.min():.1f}, max {bits.max():.1f}); "
            f"higher = less like the training data -> {run.folder / 'score' / 'scores.csv'}"
        )

    _api_command(body, trust_code)


@app.command("classify")
def classify(
    inputs: Inputs = None,
    name: Name = None,
    out_dir: OutDir = "artifacts",
    from_split: FromSplit = None,
    n: FromN = 1000,
    trust_code: Trust = False,
    device: Device = "auto",
) -> None:
    """Use the class-conditional prior as a generative classifier: argmax_c p(codes | c) p(c).

    Example: vqprior classify --from test --n 500"""

    def body():
        from .api import load

        run = load(_run_dir_of(name, out_dir), device, trust_code=trust_code)
        images, labels, names = _inputs(run, inputs, from_split, n)  # with --from: the split's own labels
        import torch

        chunks = list(range(0, len(images), 500))
        parts = [run.classify(images[i : i + 500]) for i in ConsoleReporter().track(chunks, len(chunks), "classify")]
        pred, post = torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
        if labels is not None:
            console.print(
                f"generative classifier: {(pred == labels).double().mean():.2%} of {len(labels)} {from_split} images correct"
            )
        else:
            for who, c, p in zip(names, pred.tolist(), post.max(1).values.tolist()):
                console.print(f"{who}: {run.class_names[c]} ({p:.0%})")

    _api_command(body, trust_code)


@app.command("serve")
def serve(
    name: Name = None,
    out_dir: OutDir = "artifacts",
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback by default: only this machine).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 7860,
    device: Device = "auto",
    trust_code: Trust = False,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Serve the MNIST run shipped with the package (no training).")
    ] = False,
) -> None:
    """A local page over a finished run: generate, mix, morph, complete or repair a digit, score an image.

    Needs the serve extra (pip install 'vqprior[serve]').

    Example: vqprior serve --pretrained"""
    with _one_line_errors("stopped"), trusting_code(trust_code):
        try:
            import uvicorn

            from .serve.app import allowed_hosts, create_app
        except ImportError as e:
            raise UserError(
                f"vqprior serve needs the serve extra ({e.name} is missing): pip install 'vqprior[serve]'"
            ) from None
        import socket

        if pretrained:
            from .pretrained import folder

            run_dir = folder("mnist")
        else:
            run_dir = _run_dir_of(name, out_dir)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:  # one line for a taken port
            try:
                probe.bind((host, port))
            except OSError as e:
                raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
        web = create_app(run_dir, device, trust_code, hosts=allowed_hosts(host))
        console.print(f"[green]serving[/] {run_dir} at [bold]http://{host}:{port}/[/] (Ctrl-C stops)")
        uvicorn.run(web, host=host, port=port, log_level="warning")


@app.command("pretrained")
def pretrained_run(
    which: Annotated[str, typer.Argument(help="Which shipped run: mnist.")] = "mnist",
    out_dir: OutDir = "artifacts",
    name: Annotated[Optional[str], typer.Option(help="Run name to copy it to (default: mnist-pretrained).")] = None,
    replace: Annotated[bool, typer.Option(help="Replace an existing folder of that name.")] = False,
) -> None:
    """Copy the pretrained run shipped with the package to <out-dir>/<name>: every command works on it at once.

    It was made by the default `vqprior run` on MNIST and evaluated by `vqprior eval` (PRETRAINED.json says how).

    Then: vqprior run-stage 4 --name mnist-pretrained --label 3

    Example: vqprior pretrained mnist"""
    with _one_line_errors():
        from .pretrained import install

        if name is not None:
            validate_run_name(name)
        target = install(which, Path(out_dir), name, replace)
        made = json.loads((target / "PRETRAINED.json").read_text())
        ev = made["eval"]
        console.print(
            f"[green]pretrained {which}[/] -> {target} (vqprior {made['versions']['vqprior']}; samples at "
            f"{ev['fd_ratio_worst_space']:.2f}x the floor in the worst feature space, conditional accuracy "
            f"{ev['conditional_accuracy']:.1%}, {ev['test_bits_per_map']:.1f} bits/map)"
        )
        console.print(
            f"next: vqprior run-stage 4 --name {target.name} --label 3 | vqprior serve --name {target.name} | "
            f"python -c \"import vqprior; vqprior.load('{target}')\""
        )


def _examples_at_the_end() -> None:
    """Each command's `Example:` line (the last of its docstring) is shown after its options, where --help ends."""
    import inspect

    for command in app.registered_commands:
        doc = inspect.getdoc(command.callback) or ""
        head, sep, example = doc.rpartition("\nExample: ")
        if sep:
            command.help, command.epilog = head.rstrip(), f"Example: {example.strip()}"


_examples_at_the_end()


def main() -> None:
    """The console entry point: a mistyped option or an out-of-range value is one line too, like every other error."""
    usage_error = next(
        c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
    )  # click's, wherever typer keeps it
    try:
        code = app(prog_name="vqprior", standalone_mode=False)
    except usage_error as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # plain `vqprior`: the help, as before
            app(prog_name="vqprior", args=["--help"])
        where = e.ctx.command_path if getattr(e, "ctx", None) is not None else "vqprior"
        console.print(
            f"[bold red]error:[/] {escape(' '.join(e.format_message().split()))}; see `{where} --help`", soft_wrap=True
        )
        sys.exit(2)
    except typer.Abort:
        console.print("[bold red]error:[/] interrupted", soft_wrap=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
