"""What every command shares: the app, the console (progress bars, one line per epoch, one line per error), the
shared flags and the one-line error handling."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..config_checks import validate_run_name
from ..config_files import presets
from ..errors import UserError, os_error_message
from ..reporter import Reporter

T = TypeVar("T")
PIPED_WIDTH = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 120
RESUMABLE = {1, 3}

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# lines never wrap (a piped or logged "next: vqprior ..." command stays one line that can be copied); tables are
# laid out for the terminal's width, or 120 columns when output goes to a file or a pipe
console = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else PIPED_WIDTH)


def _print_version(value: bool) -> None:
    if value:
        from ..version import __version__

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
    console.print(f"[bold red]error:[/] {escape(where + one_line)}", soft_wrap=True)
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
    except RuntimeError as e:
        if isinstance(e.__cause__, KeyboardInterrupt):  # Python wraps one raised inside __set_name__ (class creation)
            _fail(interrupted, 130)
        raise
    except OSError as e:
        message = os_error_message(e)
        if message is None:
            raise
        _fail(message)


def _flag_values(
    name: Optional[str],
    labels: list[str],
    mix: Optional[str],
    n: Optional[int],
    temperature: Optional[float],
    seed: Optional[int],
    sampler: Optional[str],
    guidance: Optional[str] = None,
) -> dict:
    """The command's own flags as config values (a layer applied after --set, so a flag wins), validated with the
    rest of the config."""
    run, sample = {}, {}
    if name is not None:
        run["name"] = name
    if labels:
        sample["labels"] = [label_value(c) for c in labels]
    if mix is not None:
        sample["mix"] = mix_flag(mix)
    for key, value in (("per_class", n), ("temperature", temperature), ("seed", seed)):
        if value is not None:
            sample[key] = value
    if guidance is not None:
        from .. import guidance as guidance_values

        sample["guidance"] = guidance_values.to_json(guidance_flag(guidance))
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
    list[str],
    typer.Option("--label", "-l", help="Class to draw, by name or index (repeatable; default every class)."),
]
Mix = Annotated[Optional[str], typer.Option(help="Stage 4: draw between classes, e.g. --mix 3:0.5,8:0.5.")]
PerClass = Annotated[
    Optional[int], typer.Option("--per-class", help="Stage 4: images per requested class (strips for --morph).")
]
Temp = Annotated[Optional[float], typer.Option(help="Stage 4: sampling temperature (> 0).")]
GUIDANCE_HELP = "classifier-free guidance scale (1 = none), or first:last, a ramp over the raster positions"
Guidance = Annotated[Optional[str], typer.Option(help=f"Stage 4: {GUIDANCE_HELP}.")]


def label_value(text: str) -> int | str:
    """A --label as given: an index (digits) or a class name; both are resolved against the run's classes."""
    text = str(text).strip()
    return int(text) if text.isdigit() and len(text) < 10 else text


def mix_flag(text: str) -> dict:
    """--mix seven:0.5,one:0.5 (or 7:0.5,1:0.5) as {class: weight}."""
    mix = {}
    for item in text.split(","):
        name, sep, weight = item.rpartition(":")
        try:
            if not sep or not name.strip():
                raise ValueError(item)
            mix[label_value(name)] = float(weight)
        except ValueError:
            raise UserError(
                f"--mix {text!r}: expected class:weight pairs, e.g. --mix 3:0.5,8:0.5 or --mix seven:0.5,one:0.5"
            ) from None
    return mix


def morph_flag(text: str) -> list[int | str]:
    """--morph four:nine (or 4:9) as the two classes."""
    ends = [label_value(c) for c in text.split(":")]
    if len(ends) != 2 or "" in ends:
        raise UserError(f"--morph {text!r}: expected two classes, e.g. --morph 4:9 or four:nine")
    return ends


def guidance_flag(text: Optional[str]):
    """--guidance's value (`1.5` or `1.25:2`) as a number or a (first, last) pair; None when not given."""
    if text is None:
        return None
    from .. import guidance

    try:
        return guidance.parse(text)
    except ValueError as e:
        raise UserError(str(e)) from None


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


def finished_runs(out_dir: str | Path, stage: int = 3) -> list[str]:
    """The names of the run folders under `out_dir` whose stage `stage` has finished, sorted."""
    from ..run_folder import RunFolder

    root = Path(out_dir)
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and RunFolder(p).finished(stage))
    except OSError:
        return []


NO_RUN = "`vqprior pretrained mnist` copies the shipped MNIST run there (seconds), `vqprior run` trains one (minutes)"


def _run_dir_of(name: Optional[str], out_dir: str, stage: int = 3) -> Path:
    """The run a command works on: --name's, else the one finished run under --out-dir; otherwise one line that lists
    the runs found (or says how to get one). `stage`: the last stage the command needs (3, the prior, for most)."""
    from ..run_folder import RunFolder

    found = finished_runs(out_dir, stage)
    there = f"runs in {out_dir}: {', '.join(found)}" if found else f"no finished runs in {out_dir}: {NO_RUN}"
    if name is not None:
        validate_run_name(name)  # the same rules as run.name
        run_dir = Path(out_dir) / name
        if not RunFolder(run_dir).finished(stage):
            what = "no finished run" if not RunFolder(run_dir).finished(1) else f"no finished stage {stage} in the run"
            raise UserError(f"{what} {name!r} in {out_dir}; {there}")
        return run_dir
    if len(found) == 1:
        console.print(f"run: {Path(out_dir) / found[0]} (the one run in {out_dir}; --name picks another)")
        return Path(out_dir) / found[0]
    if not found:
        raise UserError(f"no finished run in {out_dir}: {NO_RUN}; or pass --out-dir")
    raise UserError(f"{len(found)} {there}; pick one with --name (e.g. --name {found[0]})")


OutDir = Annotated[str, typer.Option("--out-dir", help="Folder that holds the runs.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda or cuda:N.")]
