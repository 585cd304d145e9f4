"""Docs that cannot rot: every shell and Python block in README.md and docs/*.md is run here, against a tiny run
in artifacts/mnist and the shipped pretrained run, or listed in NOT_RUN with the reason (training for minutes, a
GPU, several processes). A listed `vqprior` command still has each of its flags checked against its --help, so a
renamed flag breaks this test, not a reader. A command no rule covers fails the test: classify it here."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_args
from PIL import Image
from typer.testing import CliRunner

from vqprior.cli import app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
runner = CliRunner()

# (pattern on the command line, why it is not run); the first matching rule wins
NOT_RUN = [
    (r"^make (run|test)$", "sets up .venv and trains for about 20 minutes (CI runs `make test` itself)"),
    (r"^pip install", "installs packages"),
    (
        r"^(torchrun|srun) ",
        "needs several processes, GPUs or machines (tests/test_distributed.py runs torchrun on CPU)",
    ),
    (r"^pytest -m cuda|--device cuda", "needs a GPU"),
    (r"^\.venv/bin/python bench/", "a benchmark: minutes of measurement (its --help is run instead)"),
    (r"^vqprior run( |$)", "trains for minutes (tests/test_foundation.py runs the pipeline on tiny settings)"),
    (r"^vqprior run-stage [123]", "trains for minutes"),
    (r"^vqprior serve", "serves until stopped (tests/test_serve.py drives the page)"),
    (r"--label seven", "needs the folder run of the block above, whose classes are named (it trains for minutes)"),
    (
        r"^vqprior pretrained mnist$",
        "copies the shipped run (tests/test_pretrained.py); here the commands below work on the one run there is",
    ),
    (
        r"--name (my-run|my_digits|diagonal|own-prior|quick|rowlstm|transformer|masked|cand)\b",
        "needs a run that a block above trains",
    ),
]
CAPS = {"--n": 200}  # a cheap variant of commands that score many images


def shell_commands(text: str) -> list[str]:
    out = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            for part in " ".join(shlex.quote(w) for w in words).split(" '&&' "):
                out.append(part)
    return out


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def collected() -> list[tuple[str, str]]:
    return [(page.name, cmd) for page in PAGES for cmd in shell_commands(page.read_text())]


def reason_not_run(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN if re.search(pattern, command)), None)


def cheap(args: list[str]) -> list[str]:
    args = list(args)
    for flag, cap in CAPS.items():
        if flag in args:
            i = args.index(flag) + 1
            args[i] = str(min(int(args[i]), cap))
        elif args[0] in ("eval",):
            args += [flag, str(cap)]
    return args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    import os

    where = tmp_path_factory.mktemp("docs")
    result = runner.invoke(app, ["run", *tiny_args(where / "artifacts", name="mnist")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    Image.fromarray(digit).save(where / "my_digit.png")
    mask = np.full((28, 28), 255, np.uint8)
    mask[14:, :] = 0
    Image.fromarray(mask).save(where / "mask.png")
    (where / "some_images").mkdir()
    Image.fromarray(digit).save(where / "some_images" / "a.png")
    before = os.getcwd()
    os.chdir(where)
    yield where
    os.chdir(before)


def test_every_block_is_run_or_listed_with_a_reason(workspace):
    seen, ran, listed, bench = set(), [], [], []
    for page, command in collected():
        if command in seen:
            continue
        seen.add(command)
        words = shlex.split(command)
        why = reason_not_run(command)
        if why is not None:
            listed.append((page, command, why))
            if words[0] == "vqprior":
                check_flags(words)
            elif words[0] == ".venv/bin/python" and words[1].startswith("bench/"):
                bench.append(words)
            continue
        assert words[0] == "vqprior", f"{page}: no rule for `{command}`: run it here or add it to NOT_RUN with why"
        result = runner.invoke(app, cheap(words[1:]), catch_exceptions=False)
        assert result.exit_code == 0, f"{page}: `{command}` failed:\n{result.output}"
        ran.append(command)
    check_bench(bench)
    assert len(ran) >= 20 and len(listed) >= 10 and bench, (len(ran), len(listed), len(bench))


def check_flags(words: list[str]) -> None:
    command = [w for w in words[1:3] if not w.startswith("-")][:1]
    if command and command[0] == "run-stage":
        command = ["run-stage"]
    result = runner.invoke(app, [*command, "--help"], terminal_width=300)
    assert result.exit_code == 0, result.output
    for w in words:
        if w.startswith("--"):
            flag = w.split("=", 1)[0]
            assert flag in result.output, f"`{' '.join(words)}`: {flag} is not an option of vqprior {command[0]}"


# prints {script: its --help text} for the scripts named on the command line: one interpreter (one torch import)
# for every benchmark the docs name, each script run as __main__ with --help as it would be from the shell
HELP_OF_EACH = """
import contextlib, io, json, runpy, sys
texts = {}
for script in sys.argv[1:]:
    out = io.StringIO()
    sys.argv = [script, "--help"]
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            if e.code not in (0, None):
                raise
    texts[script] = out.getvalue()
print(json.dumps(texts))
"""


def check_bench(commands: list[list[str]]) -> None:
    """Every benchmark a page names exists, and takes each option the page gives it (by its --help)."""
    scripts = sorted({words[1] for words in commands})
    for script in scripts:
        assert (ROOT / script).is_file(), f"{script} does not exist"
    out = subprocess.run(
        [sys.executable, "-c", HELP_OF_EACH, *scripts], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    helps = json.loads(out.stdout.splitlines()[-1])
    for words in commands:
        assert "usage:" in helps[words[1]], f"{words[1]} --help printed no usage"
        for w in words[2:]:
            if w.startswith("--"):
                assert w.split("=", 1)[0] in helps[words[1]], f"{words[1]} has no option {w}"


@pytest.mark.parametrize(
    "page, index",
    [(p.name, i) for p in PAGES for i, _ in enumerate(python_blocks(p.read_text()))],
)
def test_every_python_block_runs(workspace, page, index):
    path = next(p for p in PAGES if p.name == page)
    code = python_blocks(path.read_text())[index]
    exec(compile(code, f"{page}[python block {index}]", "exec"), {"__name__": "__docs__"})


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_own_encoder_example_runs_as_its_file_says(tmp_path, monkeypatch):
    """examples/half_res.toml's own command, from another folder (its targets are relative to the file), on tiny
    data; without --trust-code it is refused before anything is written."""
    toml = ROOT / "examples" / "half_res.toml"
    documented = next(
        line.lstrip("# ").strip() for line in toml.read_text().splitlines() if line.lstrip("# ").startswith("vqprior")
    )
    words = shlex.split(documented.replace("examples/half_res.toml", str(toml)))
    assert words[:2] == ["vqprior", "run"] and "--trust-code" in words, documented
    monkeypatch.chdir(tmp_path)
    small = ["--set", "data.train_limit=600", "--set", "data.test_limit=200", "--set", 'run.device="cpu"']
    small += ["--set", 'run.precision="fp32"', "--set", "prior.network.params={channels=8, layers=2, kernel=3}"]
    refused = runner.invoke(app, [w for w in words[1:] if w != "--trust-code"] + small)
    assert (
        refused.exit_code == 2
        and "--trust-code" in refused.output
        and not (tmp_path / "artifacts" / "half-res").exists()
    )
    result = runner.invoke(app, words[1:] + small, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    codes = np.load(tmp_path / "artifacts" / "half-res" / "stage2" / "train_codes.npy")
    assert codes.shape[1:] == (14, 14)  # the example's encoder halves 28x28, the built-in quarters it
