"""What a user installs is what the tests ran: the wheel holds every module, and a source checkout imports too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def source_modules() -> set[str]:
    found = set()
    for path in (ROOT / "vqprior").rglob("*.py"):
        if "__pycache__" not in path.parts:
            found.add(path.relative_to(ROOT).as_posix())
    return found


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_each_imports_from_it(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv", ".git", "artifacts", "build", "*.egg-info", "__pycache__"),
    )
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("vqprior-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    missing = source_modules() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert {"vqprior/presets/quick.toml", "vqprior/report/report.html.j2"} <= names
    shipped = {
        str(f.relative_to(ROOT))
        for f in (ROOT / "vqprior" / "pretrained").rglob("*")
        if f.is_file() and f.suffix != ".pyc" and "__pycache__" not in f.parts
    }
    assert shipped <= names, f"the pretrained run is not whole in the wheel: {sorted(shipped - names)[:5]}"
    code = (
        "import importlib, pkgutil, vqprior\n"
        "assert vqprior.__file__.startswith(%r), vqprior.__file__\n"
        "for m in pkgutil.walk_packages(vqprior.__path__, 'vqprior.'):\n"
        "    importlib.import_module(m.name)\n"
        "import vqprior.stages.s4_sample\n"
        "from vqprior.run_folder import RunFolder\n"
        "from vqprior.pretrained import folder\n"
        "assert str(folder('mnist')).startswith(%r)\n"
        "for stage in (1, 2, 3, 4):\n"
        "    RunFolder(folder('mnist')).read_stage(stage)\n" % (str(tmp_path / "site"), str(tmp_path / "site"))
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr


def test_a_source_checkout_runs_the_command_with_no_install_step(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import sys; sys.path.insert(0, %r); import vqprior.stages.s1_vqvae as s; print(s.__file__)" % str(ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0 and "stages" in result.stdout, result.stderr
    help_ = subprocess.run([sys.executable, "-m", "vqprior", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert help_.returncode == 0 and "run-stage" in help_.stdout


def test_each_stage_program_is_its_run_stage_command(tmp_path):
    """stages/sN_*.py [options] runs `vqprior run-stage N [options]` from any folder, with no install step: stage 2
    without a stage 1 names stage 1 in its one error line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    programs = sorted((ROOT / "stages").glob("s[0-9]_*.py"))
    assert [p.name[1] for p in programs] == ["1", "2", "3", "4"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "s2_codes.py"), "--out-dir", str(tmp_path), "--name", "r"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode != 0 and "error: stage 2 needs stage 1" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _module_imports() -> dict[str, set[str]]:
    """vqprior's modules (the stages' code as vqprior.stages.*) and the vqprior modules each one imports anywhere:
    at module level, inside functions (lazy) and under TYPE_CHECKING alike, so a circle cannot hide in a deferred
    import."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "vqprior"
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in names else target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {t for t in found if t in names and t != name}
    return graph


def test_the_import_graph_has_no_circle_and_nothing_imports_the_package_top():
    graph = _module_imports()
    assert "vqprior.run_folder" in graph and "vqprior.artifacts" in graph["vqprior.run_folder"]
    up = sorted(m for m, targets in graph.items() if "vqprior" in targets and m != "vqprior")
    assert not up, f"modules that import the package's __init__ (an arrow back up): {up}"
    # the layers: the façade (api.Run) is used only by what adapts it; the command line and the page by nothing in
    # the library; the config is plain data that knows no folders
    adapters = ("vqprior.cli", "vqprior.serve", "vqprior.evaluation.run_eval")
    users = {m for m, targets in graph.items() if "vqprior.api" in targets} - {"vqprior"}
    assert all(m.startswith(adapters) for m in users), f"below the façade but importing it: {sorted(users)}"
    for top in ("vqprior.cli", "vqprior.serve"):
        users = {m for m, targets in graph.items() if any(t.startswith(top) for t in targets)}
        assert all(m.startswith(("vqprior.cli", "vqprior.serve", "vqprior.__main__")) for m in users), sorted(users)
    assert not {t for t in graph["vqprior.config"] if t.startswith(("vqprior.run_folder", "vqprior.artifacts"))}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(t) :] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
