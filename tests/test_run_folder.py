"""RunFolder: the one owner of the run folder's layout and of the verified reads of what its stages saved."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from vqprior.artifacts import save_json
from vqprior.errors import UserError
from vqprior.report.progress import ProgressWriter
from vqprior.run_folder import RunFolder


def finished_stage(run: RunFolder, stage: int, config: dict, inputs: dict | None = None) -> None:
    with run.writing_stage(stage) as out:
        save_json(out / "config.json", config)
        run.write_manifest(out, stage, inputs or {}, {}, {"total": 1.0}, {"seed": 0})


# the run folder's names: files (anywhere in a string) and folders (as a path part built with "/")
LAYOUT_FILES = ("eval.json", "manifest.json", "vqvae.safetensors", "prior.safetensors", "config.json", "metrics.json")
LAYOUT_FOLDERS = ("eval", "results", "complete", "score", "generated", ".checkpoints", "progress", "tensorboard")


def _layout_literals(path: Path) -> list[str]:
    """Places in one Python file that type out a name of the run folder's layout (docstrings aside)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    file_name = re.compile(r"(?<![\w.])(%s)(?![\w])" % "|".join(map(re.escape, LAYOUT_FILES)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if file_name.search(node.value):
                found.append(f"{path.name}:{node.lineno} {node.value[:50]!r}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # path / "eval", path / f"stage{n}"
            right = node.right
            if isinstance(right, ast.JoinedStr) and right.values and isinstance(right.values[0], ast.Constant):
                right = right.values[0]
            if isinstance(right, ast.Constant) and isinstance(right.value, str):
                if right.value in LAYOUT_FOLDERS or re.match(r"stage\d?$", right.value):
                    found.append(f"{path.name}:{node.lineno} / {right.value!r}")
    return found


def test_no_module_but_run_folder_types_out_a_name_of_the_layout(tmp_path):
    """eval.json, manifests, weights, results/, complete/, score/ ...: RunFolder names them, everything else (the
    library, the stage programs, bench/) asks it. The scan itself is checked on a file that breaks the rule."""
    root = Path(__file__).resolve().parents[1]
    files = [p for p in (root / "vqprior").rglob("*.py") if "stages" not in p.relative_to(root / "vqprior").parts]
    files += [*(root / "stages").glob("*.py"), *(root / "bench").glob("*.py")]
    owner = root / "vqprior" / "run_folder.py"
    assert owner in files and len(files) > 60
    found = [hit for f in files if f != owner for hit in _layout_literals(f)]
    assert not found, f"layout names typed out outside RunFolder: {found}"
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""eval.json in a docstring is fine."""\n'
        'a = run / "eval" / "eval.json"\n'
        'b = f"{run}/stage2/manifest.json"\n'
        'c = run / f"stage{s}"\n'
        'd = ("metrics.jsonl", "complete")\n'
    )
    assert sorted(h.split()[0] for h in _layout_literals(bad)) == ["bad.py:2", "bad.py:2", "bad.py:3", "bad.py:4"]
    run = RunFolder(tmp_path / "r")
    assert run.stage(3) == tmp_path / "r" / "stage3" and run.weights(3).parent == run.stage(3)
    assert run.eval_json.parent == run.eval_results.parent == run.eval
    assert not run.finished(1) and run.manifest(1) is None and run.output_sha(1, "config.json") is None


def test_saved_settings_are_read_from_verified_bytes_once_and_dropped_when_the_stage_is_rewritten(tmp_path):
    run = RunFolder(tmp_path / "r")
    data = {"source": "mnist", "root": None}
    finished_stage(run, 1, {"data": data, "class_names": ["a", "b"], "vqvae": {"target": "x", "params": {}}})
    assert run.saved(1)["class_names"] == ["a", "b"] and run.class_names() == ["a", "b"]
    assert run.component(1, "vqvae") == {"target": "x", "params": {}}
    assert run.data().source == "mnist"
    assert run.output_sha(1, "config.json") == run.manifest(1)["outputs"]["config.json"]

    # a reader's second look is the first one's (no re-read); rewriting the stage through the owner drops it
    finished_stage(run, 1, {"data": data, "class_names": ["c"]})
    assert run.class_names() == ["c"]
    with pytest.raises(UserError, match="no valid 'vqvae'"):
        run.component(1, "vqvae")

    # a config changed behind the manifest's back is refused, by a fresh reader, in one line
    (run.stage(1) / "config.json").write_text(json.dumps({"class_names": ["forged"]}))
    with pytest.raises(UserError, match="changed after stage 1 wrote it"):
        RunFolder(run.path).saved(1)


def test_a_stage_made_from_a_replaced_earlier_stage_is_refused(tmp_path):
    run = RunFolder(tmp_path / "r")
    finished_stage(run, 1, {"n": 1})
    finished_stage(run, 2, {"n": 2}, inputs={"config": run.stage(1) / "config.json"})
    assert run.read_stage(2)[1]["inputs"]["config"]["path"] == "stage1/config.json"
    assert run.is_current(2, {"seed": 0}) and not run.is_current(2, {"seed": 1})
    finished_stage(run, 1, {"n": 3})
    with pytest.raises(UserError, match="re-run stage 2"):
        run.read_stage(2)
    assert not run.is_current(2, {"seed": 0})


def test_forged_sampling_defaults_are_refused(tmp_path):
    run = RunFolder(tmp_path / "r")
    finished_stage(run, 3, {"config": {"sample": {"temperature": 0.9, "guidance": 1e6}}})
    with pytest.raises(UserError, match="out of range"):
        run.sampling()
    finished_stage(run, 3, {"config": {"sample": {"temperature": 0.9, "guidance": 1.5}}})
    assert run.sampling() == (0.9, 1.5)


def test_evaluations_skip_unreadable_results(tmp_path):
    run = RunFolder(tmp_path / "r")
    assert run.evaluation() is None and run.evaluations() == {}
    run.eval_results.mkdir(parents=True)
    save_json(run.eval / "eval.json", {"n_samples": 10})
    save_json(run.eval_results / "a.json", {"n_samples": 10})
    (run.eval_results / "b.json").write_text("{not json")
    assert run.evaluation() == {"n_samples": 10}
    assert list(run.evaluations()) == ["a.json"]


def test_a_progress_line_cut_short_by_a_crash_is_dropped_on_resume(tmp_path):
    run = RunFolder(tmp_path / "r")
    run.progress(3).mkdir(parents=True)
    lines = run.progress(3) / "metrics.jsonl"
    lines.write_text('{"epoch": 1, "loss": 2.0}\n{"epoch": 2, "loss": 1.5}\n{"epoch": 3, "lo')
    ProgressWriter(run, 3, first_epoch=3)
    assert lines.read_text() == '{"epoch": 1, "loss": 2.0}\n{"epoch": 2, "loss": 1.5}\n'
    ProgressWriter(run, 3, first_epoch=2)
    assert lines.read_text() == '{"epoch": 1, "loss": 2.0}\n'


def test_runs_shows_the_median_over_the_sampling_seeds_kept_at_the_latest_setting(tmp_path):
    from vqprior.report.runs import collect_runs

    run = RunFolder(tmp_path / "r")
    finished_stage(run, 1, {})
    run.eval_results.mkdir(parents=True)

    def result(seed, fd, acc, n=10000):
        return {"reference": "test", "n_samples": n, "temperature": 1, "guidance": 1.5, "seed": seed,
                "samples": {"fd_ratio": fd, "conditional_accuracy": acc}}  # fmt: skip

    for seed, fd, acc in ((0, 2.09, 0.990), (1, 2.16, 0.992), (2, 2.23, 0.991)):
        save_json(run.eval_results / f"test-n10000-t1-g1.5-seed{seed}.json", result(seed, fd, acc))
    save_json(run.eval_results / "test-n2000-t1-g1.5-seed0.json", result(0, 9.0, 0.5, n=2000))  # another setting
    save_json(run.eval / "eval.json", result(2, 2.23, 0.991))
    (row,) = collect_runs(tmp_path)
    assert row[3] == "2.16x" and row[4] == "99.1%"
    assert "median of 3 seeds, 2.09–2.23x" in row[6]
    save_json(run.eval / "eval.json", result(0, 9.0, 0.5, n=2000))  # the latest setting has one seed: as it is
    (row,) = collect_runs(tmp_path)
    assert row[3] == "9.00x" and "seed 0" in row[6]
