"""The `vqprior` command. common.py holds the app, the console, the shared flags and errors; the commands live in
train.py (run, run-stage), generate.py (generate), measure.py (eval, report, runs) and use.py (complete, score,
classify, serve, pretrained)."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

# importing the command modules registers their commands, in the order --help lists them: training, measuring, use
# isort: off
from . import train  # noqa: F401
from . import generate  # noqa: F401
from . import measure  # noqa: F401
from . import use  # noqa: F401

# isort: on
from .common import app, console


def _examples_at_the_end() -> None:
    """Each command's `Example:` line (the last of its docstring) is shown after its options, where --help ends."""
    import inspect

    for command in app.registered_commands:
        doc = inspect.getdoc(command.callback) or ""
        head, sep, example = doc.rpartition("\nExample: ")
        if sep:
            command.help, command.epilog = head.rstrip(), f"Example: {example.strip()}"


_examples_at_the_end()


def _did_you_mean(error) -> str:
    """' (did you mean `generate`?)' for a mistyped command name; click already says it for options."""
    import difflib
    import re

    typed = re.match(r"No such command '(.+)'", error.format_message())
    if not typed or "did you mean" in error.format_message().lower():
        return ""
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    close = difflib.get_close_matches(typed.group(1), commands, n=1)
    return f" Did you mean '{close[0]}'?" if close else f" The commands: {', '.join(commands)}"


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
        message = " ".join(e.format_message().split()) + _did_you_mean(e)
        console.print(f"[bold red]error:[/] {escape(message)}; see `{where} --help`", soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        console.print("[bold red]error:[/] interrupted", soft_wrap=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
