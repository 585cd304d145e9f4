"""What every command shares: the app, the console (progress bars, one line per epoch, one line per error), the
shared flags and the one-line error handling."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..config import validate_run_name
from ..config_files import presets
from ..errors import UserError, os_error_message
from ..reporter import Reporter

T = TypeVar("T")
RESUMABLE = {1, 3}

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, highlight=False)


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
    labels: list[int],
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
        sample["labels"] = list(labels)
    if mix is not None:
        try:
            sample["mix"] = {str(int(c)): float(w) for c, w in (item.split(":") for item in mix.split(","))}
        except ValueError:
            raise UserError(f"--mix {mix!r}: expected class:weight pairs, e.g. --mix 3:0.5,8:0.5") from None
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
    list[int], typer.Option("--label", "-l", help="Stage 4: class to draw (repeatable; default all classes).")
]
Mix = Annotated[Optional[str], typer.Option(help="Stage 4: draw between classes, e.g. --mix 3:0.5,8:0.5.")]
PerClass = Annotated[
    Optional[int], typer.Option("--per-class", help="Stage 4: images per requested class (strips for --morph).")
]
Temp = Annotated[Optional[float], typer.Option(help="Stage 4: sampling temperature (> 0).")]
GUIDANCE_HELP = "classifier-free guidance scale (1 = none), or first:last, a ramp over the raster positions"
Guidance = Annotated[Optional[str], typer.Option(help=f"Stage 4: {GUIDANCE_HELP}.")]


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


def _run_dir_of(name: Optional[str], out_dir: str) -> Path:
    if name is not None:
        validate_run_name(name)  # the same rules as run.name
    run_dir = Path(out_dir) / (name or "mnist")
    from ..run_folder import RunFolder

    if not RunFolder(run_dir).stage(1).is_dir():
        raise UserError(f"no finished run in {run_dir}; run `vqprior run` first (or pass --name / --out-dir)")
    return run_dir


OutDir = Annotated[str, typer.Option("--out-dir", help="Folder that holds the runs.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda or cuda:N.")]
