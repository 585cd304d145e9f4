"""The command line's own texts: --version, an example at the end of every --help, and a start without torch."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from vqprior import __version__
from vqprior.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"vqprior {__version__}"


def test_every_command_ends_its_help_with_a_runnable_example():
    names = [c.name for c in app.registered_commands]
    assert len(names) >= 10
    for name in names:
        result = runner.invoke(app, [name, "--help"], terminal_width=200)
        lines = [line.strip() for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 0 and lines[-1].startswith("Example: vqprior "), (name, lines[-3:])


def test_the_command_line_starts_without_importing_torch():
    # --help and argument errors answer at once: torch (about 1.5 s to import) loads only when a command needs it
    code = (
        "import sys, vqprior.cli; print(sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_the_commands_in_the_order_of_the_work():
    lines = [line.split()[1] for line in runner.invoke(app, ["--help"]).output.splitlines() if line.startswith("│ ")]
    commands = [c for c in lines if c in {"run-stage", "run", "eval", "report", "runs", "complete", "serve"}]
    assert commands == ["run-stage", "run", "eval", "report", "runs", "complete", "serve"], commands
