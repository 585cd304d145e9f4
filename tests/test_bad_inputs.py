"""Bad input gets one line saying what is wrong and what to do, a non-zero exit, no traceback, and no new
or changed artifact (a checkpoint kept on purpose, after a NaN loss, is the one exception)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import tiny_args
from typer.testing import CliRunner

from vqprior.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    result = runner.invoke(app, ["run", *tiny_args(out), "--per-class", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out / "t"


def snapshot(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".checkpoints" not in p.parts
    }


def rm(stage):
    return lambda run, tmp, mp: shutil.rmtree(run / stage)


def garbage(rel, data=b"\x00garbage\xff" * 10):
    return lambda run, tmp, mp: (run / rel).write_bytes(data)


def truncate(rel):
    def setup(run, tmp, mp):
        path = run / rel
        path.write_bytes(path.read_bytes()[:-100])

    return setup


def garbage_with_matching_manifest(run, tmp, mp):
    path = run / "stage1" / "vqvae.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    manifest = json.loads((run / "stage1" / "manifest.json").read_text())
    manifest["outputs"]["vqvae.safetensors"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (run / "stage1" / "manifest.json").write_text(json.dumps(manifest))


def retrain_stage1(run, tmp, mp):
    result = runner.invoke(
        app, ["run-stage", "1", *tiny_args(run.parent), "--set", "run.seed=7"], catch_exceptions=False
    )
    assert result.exit_code == 0


def text_files_as_images(run, tmp, mp):
    (tmp / "imgs").mkdir()
    for i in range(3):
        (tmp / "imgs" / f"{i}.png").write_text("not an image")


def empty_folder(run, tmp, mp):
    (tmp / "imgs").mkdir()


def disk_full(run, tmp, mp):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(np, "save", full)


HELD_LOCKS = []


def live_lock(run, tmp, mp):
    # an OS lock held through a second open file description conflicts like another process's would
    fd = os.open(run / ".lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, str(os.getppid()).encode())
    HELD_LOCKS.append(fd)


def corrupt_checkpoint(run, tmp, mp):
    (run / ".checkpoints").mkdir()
    (run / ".checkpoints" / "stage1.pt").write_bytes(b"PK\x03\x04 not a checkpoint")


FOLDER = ["--set", 'data.source="folder"', "--set", 'data.root="{tmp}/imgs"']


def edit_json(rel, change):
    """Hand-edit a stage's JSON file and (as a forger would) fix its checksum in the manifest, if it is listed."""

    def setup(run, tmp, mp):
        path = run / rel
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
        manifest_path = path.parent / "manifest.json"
        if path != manifest_path:
            manifest = json.loads(manifest_path.read_text())
            manifest["outputs"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
            manifest_path.write_text(json.dumps(manifest))

    return setup


def labels_out_of_range(run, tmp, mp):
    path = run / "stage2" / "train_labels.npy"
    labels = np.load(path)
    labels[0] = 12
    np.save(path, labels)
    edit_json(
        "stage2/manifest.json",
        lambda m: m["outputs"].__setitem__("train_labels.npy", hashlib.sha256(path.read_bytes()).hexdigest()),
    )(run, tmp, mp)


def config_folder(run, tmp, mp):
    (tmp / "cfg").mkdir()


def config_not_utf8(run, tmp, mp):
    (tmp / "cfg").write_bytes(b"\xff\xfe[run]\x00\x81")


def bomb_folder(run, tmp, mp):
    from PIL import Image

    (tmp / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp / "imgs" / f"{i}.png")
    mp.setattr(Image, "MAX_IMAGE_PIXELS", 1000)


@dataclass
class Case:
    id: str
    args: list[str]
    message: str
    setup: Callable | None = None
    fresh: bool = False  # start from an empty run folder instead of a finished run
    exit_code: int = 2
    extra: list[str] = field(default_factory=list)


CASES = [
    Case("unknown-config-key", ["run-stage", "1", "--set", "vqvae.codebok_size=3"], "unknown key 'vqvae.codebok_size'"),
    Case("wrong-type", ["run-stage", "3", "--set", 'prior.epochs="many"'], "prior.epochs"),
    Case("negative-size", ["run-stage", "1", "--set", "vqvae.batch_size=-4"], "vqvae.batch_size"),
    Case("zero-size", ["run-stage", "3", "--set", "prior.network.params.channels=0"], "channels"),
    Case("K-out-of-range-for-dtype", ["run-stage", "1", "--set", "vqvae.codebook_size=70000"], "vqvae.codebook_size"),
    Case("even-kernel", ["run-stage", "3", "--set", "prior.network.params.kernel=4"], "must be odd"),
    Case("bad-run-name", ["run-stage", "1", "--name", "../elsewhere"], "run.name"),
    Case("set-without-value", ["run-stage", "1", "--set", "prior.epochs"], "expected section.key=value"),
    Case("unknown-preset", ["run-stage", "1", "--preset", "huge"], "unknown preset 'huge'"),
    Case("missing-config-file", ["run-stage", "1", "--config", "/nonexistent/cfg.toml"], "config file not found"),
    Case("stage4-option-on-stage1", ["run-stage", "1", "--label", "3"], "apply to stage 4 only"),
    Case("stage2-without-stage1", ["run-stage", "2"], "stage 2 needs stage 1", fresh=True),
    Case("stage3-without-stage2", ["run-stage", "3"], "stage 3 needs stage 2", rm("stage2")),
    Case("stage4-without-stage3", ["run-stage", "4"], "stage 4 needs stage 3", rm("stage3")),
    Case("stage4-out-of-order", ["run-stage", "4"], "stage 4 needs stage 3", fresh=True),
    Case(
        "corrupted-weights", ["run-stage", "2"], "changed after stage 1 wrote it", garbage("stage1/vqvae.safetensors")
    ),
    Case(
        "corrupted-weights-manifest-agrees",
        ["run-stage", "2"],
        "is not a readable safetensors file",
        garbage_with_matching_manifest,
    ),
    Case("truncated-npy", ["run-stage", "3"], "changed after stage 2 wrote it", truncate("stage2/train_codes.npy")),
    Case("manifest-mismatch-vqvae-vs-prior", ["run-stage", "4"], "re-run stages 2 and 3", retrain_stage1),
    Case("label-out-of-range", ["run-stage", "4", "--label", "10"], "label 10 is out of range"),
    Case("soft-labels-not-summing-to-1", ["run-stage", "4", "--mix", "3:0.5,8:0.4"], "sum to 1"),
    Case("soft-labels-malformed", ["run-stage", "4", "--mix", "3-0.5"], "expected class:weight pairs"),
    Case("temperature-zero", ["run-stage", "4", "--temperature", "0"], "sample.temperature"),
    Case("temperature-negative", ["run-stage", "4", "--temperature", "-1"], "sample.temperature"),
    Case(
        "nonexistent-image-path",
        ["run-stage", "1", "--set", 'data.source="folder"', "--set", 'data.root="/nonexistent/imgs"'],
        "is not a folder",
    ),
    Case("non-image-files", ["run-stage", "1", *FOLDER], "is a readable image", text_files_as_images),
    Case("empty-dataset", ["run-stage", "1", *FOLDER], "no images", empty_folder),
    Case("wrong-channel-count-config", ["run-stage", "1", "--set", "data.channels=2"], "data.channels"),
    Case(
        "encoder-expects-other-channels",
        ["run-stage", "1", "--set", "vqvae.encoder.params={hidden=16, res_blocks=1, in_channels=3}"],
        "failed on a [2, 1, 28, 28] batch",
    ),
    Case(
        "nan-loss",
        ["run-stage", "1", "--set", "vqvae.lr=1e30", "--set", "run.checkpoint_every=1", "--restart"],
        "the loss became",
    ),
    Case(
        "out-dir-not-writable",
        ["run-stage", "1", "--set", 'run.out_dir="/etc/hostname/sub"'],
        "choose a writable run.out_dir",
    ),
    Case("disk-full", ["run-stage", "2"], "no space left on device", disk_full),
    Case("run-folder-in-use", ["run-stage", "4"], "is in use by process", live_lock),
    Case("corrupted-checkpoint", ["run-stage", "1"], "unreadable", corrupt_checkpoint),
    Case("resume-without-checkpoint", ["run-stage", "1", "--resume"], "no checkpoint for stage 1"),
    Case("resume-and-restart", ["run-stage", "1", "--resume", "--restart"], "contradict"),
    # silently wrong or runaway values
    Case("mix-weight-nan", ["run-stage", "4", "--mix", "3:nan,8:0.5"], "sample.mix"),
    Case("name-dot", ["run-stage", "1", "--name", "."], "run.name"),
    Case("name-dotdot", ["run-stage", "4", "--name", ".."], "run.name"),
    Case("name-hidden", ["run-stage", "4", "--name", ".t"], "run.name"),
    Case("per-class-huge", ["run-stage", "4", "--per-class", "1000000"], "sample.limit"),
    Case("morph-huge", ["run-stage", "4", "--morph", "4:9", "--per-class", "20000"], "sample.limit"),
    Case("temperature-underflow", ["run-stage", "4", "--temperature", "1e-45"], "sample.temperature"),
    Case("temperature-nan", ["run-stage", "4", "--temperature", "nan"], "sample.temperature"),
    Case("guidance-inf", ["run-stage", "4", "--guidance", "inf"], "guidance"),
    Case("guidance-three-values", ["run-stage", "4", "--guidance", "1:2:3"], "first:last"),
    Case("guidance-ramp-words", ["run-stage", "4", "--guidance", "low:high"], "first:last"),
    Case("guidance-ramp-end-huge", ["run-stage", "4", "--guidance", "1:1e6"], "guidance"),
    Case("guidance-set-triple", ["run-stage", "4", "--set", "sample.guidance=[1, 2, 3]"], "sample.guidance"),
    Case("seed-negative", ["run-stage", "4", "--seed", "-1"], "sample.seed"),
    Case("seed-2-to-the-64", ["run-stage", "4", "--seed", str(2**64)], "sample.seed"),
    Case("run-seed-2-to-the-64", ["run-stage", "1", "--set", f"run.seed={2**64}"], "run.seed"),
    Case("config-is-a-folder", ["run-stage", "1", "--config", "{tmp}/cfg"], "is a folder", config_folder),
    Case("config-not-utf8", ["run-stage", "1", "--config", "{tmp}/cfg"], "not UTF-8", config_not_utf8),
    Case(
        "image-header-too-large",
        ["run-stage", "1", *FOLDER, "--set", "data.strict=true"],
        "decompression bomb",
        bomb_folder,
    ),
    # hand-edited or forged stage folders
    Case(
        "stage2-manifest-larger-K",
        ["run-stage", "3"],
        "K=200",
        edit_json("stage2/manifest.json", lambda m: m.__setitem__("codebook_size", 200)),
    ),
    Case(
        "stage2-manifest-K-vs-dtype",
        ["run-stage", "3"],
        "does not match K=4096",
        edit_json("stage2/manifest.json", lambda m: m.__setitem__("codebook_size", 4096)),
    ),
    Case(
        "stage2-manifest-missing-grid",
        ["run-stage", "3"],
        "grid: Field required",
        edit_json("stage2/manifest.json", lambda m: m.pop("grid")),
    ),
    Case(
        "stage2-manifest-fewer-classes",
        ["run-stage", "3"],
        "names 2 classes",
        edit_json("stage2/manifest.json", lambda m: m.__setitem__("class_names", ["0", "1"])),
    ),
    Case("labels-outside-the-classes", ["run-stage", "3"], "has labels 0..12", labels_out_of_range),
    Case(
        "prior-class-count-vs-names",
        ["run-stage", "4"],
        "knows 5 classes but names 10",
        edit_json("stage3/config.json", lambda c: c["prior"]["params"].__setitem__("num_classes", 5)),
    ),
    Case(
        "prior-config-without-target",
        ["run-stage", "4"],
        "no valid 'prior'",
        edit_json("stage3/config.json", lambda c: c["prior"].pop("target")),
    ),
    Case(
        "vqvae-config-not-an-object",
        ["run-stage", "2"],
        "no 'vqvae' section",
        edit_json("stage1/config.json", lambda c: c.__setitem__("vqvae", 3)),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, finished_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_dir = out / "t"
    if not case.fresh:
        shutil.copytree(finished_run, run_dir)
    if case.setup:
        case.setup(run_dir, tmp_path, monkeypatch)
    before = snapshot(out)
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    result = runner.invoke(app, [*args[:2], *tiny_args(out), *args[2:]], catch_exceptions=False)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == case.exit_code, result.output
    assert len(lines) >= 1 and lines[-1].startswith("error: "), result.output
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and case.message in errors[0], result.output
    assert "Traceback" not in result.output
    assert snapshot(out) == before, "artifacts were created or changed"
    assert not list(out.glob("*/.stage*")) if out.exists() else True, "temporary stage folder left behind"
    if case.id == "nan-loss":
        assert (run_dir / ".checkpoints" / "stage1.pt").is_file(), "the last good checkpoint must be kept"


def test_stale_lock_of_a_dead_process_is_taken_over(finished_run, tmp_path):
    run_dir = tmp_path / "t"
    shutil.copytree(finished_run, run_dir)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    (run_dir / ".lock").write_text(dead)
    result = runner.invoke(app, ["run-stage", "4", *tiny_args(tmp_path), "--per-class", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not (run_dir / ".lock").exists()


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vqprior", "run-stage", "3", "--set", f'run.out_dir="{tmp_path}"'],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "stage 3 needs stage 2" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


# ------------------------------------------------------------------ commands that read a finished run, and the Python API


def write_inputs(tmp):
    from PIL import Image

    np.savez(tmp / "wide.npz", images=np.full((2, 1, 28, 28), 3.0, np.float32))
    np.savez(tmp / "nan.npz", images=np.full((2, 1, 28, 28), np.nan, np.float32))
    np.savez(tmp / "objects.npz", images=np.array([{"a": 1}], dtype=object))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp / "big.png")
    (tmp / "text.png").write_text("not a png")


READER_CASES = [
    ("eval-temperature-zero", ["eval", "--temperature", "0"], "temperature"),
    ("eval-guidance-nan", ["eval", "--guidance", "nan"], "guidance"),
    ("eval-guidance-ramp-negative", ["eval", "--guidance", "1:-2"], "guidance"),
    ("eval-reference-unknown", ["eval", "--reference", "train"], "choose test or valid"),
    ("eval-name-dotdot", ["eval", "--name", ".."], "plain folder name"),
    ("complete-keep-rows-negative", ["complete", "--from", "test", "--keep-rows", "-1"], "out of range"),
    ("complete-temperature-tiny", ["complete", "--from", "test", "--temperature", "1e-45"], "temperature"),
    ("complete-from-unknown-split", ["complete", "--from", "valid"], "choose train or test"),
    ("score-npz-out-of-range", ["score", "{tmp}/wide.npz"], "must be floats in [0, 1]"),
    ("score-npz-nan", ["score", "{tmp}/nan.npz"], "NaN"),
    ("score-npz-of-objects", ["score", "{tmp}/objects.npz"], "not a readable .npz"),
    ("score-not-an-image", ["score", "{tmp}/text.png"], "cannot read"),
    ("classify-missing-file", ["classify", "{tmp}/nothing.png"], "does not exist"),
    ("report-no-run", ["report", "--name", "nope"], "no finished run"),
]


@pytest.mark.parametrize("case_id,args,message", READER_CASES, ids=[c[0] for c in READER_CASES])
def test_bad_input_to_a_command_over_a_finished_run(case_id, args, message, finished_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out / "t")
    write_inputs(tmp_path)
    before = snapshot(out)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    where = (
        ["--out-dir", str(out)]
        + ([] if "--name" in args else ["--name", "t"])
        + ([] if args[0] == "report" else ["--device", "cpu"])
    )
    result = runner.invoke(app, [*args, *where], catch_exceptions=False)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
        result.output
    )
    assert snapshot(out) == before


def test_usage_errors_of_the_real_command_are_one_line_too(tmp_path):
    for args, message in (
        (["eval", "--n", "1000000"], "less than or equal to 100000"),
        (["eval", "--seed", "-1"], "greater than or equal to 0"),
        (["complete", "--seed", str(2**64)], "less than or equal to"),
        (["run", "--n", "3"], "No such option: --n"),
    ):
        result = subprocess.run([sys.executable, "-m", "vqprior", *args], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


API_CASES = [
    ("soft-labels-wrong-shape", lambda r: r.generate(labels=[[0.5, 0.5]]), "soft labels must be weights [N, 10]"),
    ("soft-labels-not-summing", lambda r: r.generate(labels=np.full((1, 10), 0.5)), "sum to 1"),
    ("label-out-of-range", lambda r: r.generate(labels=[11]), "classes 0..9"),
    ("labels-empty", lambda r: r.generate(labels=[]), "non-empty"),
    ("temperature-zero", lambda r: r.generate(labels=[3], temperature=0), "temperature"),
    ("guidance-nan", lambda r: r.generate(labels=[3], guidance=float("nan")), "guidance"),
    ("guidance-triple", lambda r: r.generate(labels=[3], guidance=(1, 2, 3)), "pair [first, last]"),
    ("guidance-ramp-text", lambda r: r.generate(labels=[3], guidance=("1", 2)), "guidance"),
    ("seed-negative", lambda r: r.generate(labels=[3], seed=-1), "seed must be"),
    ("decode-codes-out-of-range", lambda r: r.decode(np.full((1, 7, 7), 99)), "codes must be in 0..15"),
    ("decode-wrong-grid", lambda r: r.decode(np.zeros((1, 5, 5), np.int64)), "codes must be integers [N >= 1, 7, 7]"),
    ("encode-nan", lambda r: r.encode(np.full((1, 28, 28), np.nan)), "NaN"),
    ("encode-floats-out-of-range", lambda r: r.encode(np.full((1, 28, 28), 7.0)), "must be in [0, 1]"),
    ("encode-not-an-array", lambda r: r.encode("digit.png"), "images must be"),
    ("encode-wrong-shape", lambda r: r.encode(np.zeros((2, 32, 32), np.uint8)), "images must be [N >= 1, 1, 28, 28]"),
    ("posterior-positions", lambda r: r.posterior(np.zeros((1, 7, 7), np.int64), positions=100), "positions must be"),
    ("complete-keep-rows", lambda r: r.complete(np.zeros((1, 28, 28), np.uint8), keep_rows=99), "out of range"),
    ("complete-samples", lambda r: r.complete(np.zeros((1, 28, 28), np.uint8), samples=0), "samples must be"),
    ("score-empty", lambda r: r.score(np.zeros((0, 1, 28, 28), np.uint8)), "N >= 1"),
    ("complete-sweeps", lambda r: r.complete(np.zeros((1, 28, 28), np.uint8), keep="bottom", sweeps=-1), "sweeps"),
    ("complete-drafts", lambda r: r.complete(np.zeros((1, 28, 28), np.uint8), keep="bottom", drafts=0), "drafts"),
    (
        "keep-object",
        lambda r: r.complete(np.zeros((1, 28, 28), np.uint8), keep=np.array([None] * 49).reshape(7, 7)),
        "keep mask",
    ),
    (
        "keep-complex",
        lambda r: r.complete(np.zeros((1, 28, 28), np.uint8), keep=np.ones((7, 7), np.complex64)),
        "keep mask",
    ),
    ("keep-ragged", lambda r: r.complete(np.zeros((1, 28, 28), np.uint8), keep=[[1, 0], [1]]), "keep mask"),
    (
        "keep-meta",
        lambda r: r.complete(np.zeros((1, 28, 28), np.uint8), keep=torch.ones(7, 7, device="meta")),
        "keep mask",
    ),
    ("keep-strings", lambda r: r.complete(np.zeros((1, 28, 28), np.uint8), keep=np.full((7, 7), "x")), "keep mask"),
    ("keep-nan", lambda r: r.complete(np.zeros((1, 28, 28), np.uint8), keep=np.full((7, 7), np.nan)), "NaN"),
    ("complete-time-budget", lambda r: r.complete(np.zeros((1, 28, 28), np.uint8), time_budget=0), "time_budget"),
]


@pytest.mark.parametrize("case_id,call,message", API_CASES, ids=[c[0] for c in API_CASES])
def test_the_python_api_raises_user_errors(case_id, call, message, finished_run):
    import vqprior
    from vqprior.errors import UserError

    run = vqprior.load(finished_run, device="cpu")
    with pytest.raises(UserError) as caught:
        call(run)
    assert message in str(caught.value) and "\n" not in str(caught.value)
