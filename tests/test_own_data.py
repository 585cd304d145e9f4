"""A user's own folder of images, end to end: class names from the folder names at every step (stage 1's listing,
--label/--mix/--morph NAME, the API, the saved files), mistyped names, commands and --set keys that suggest the
right one, config-file paths relative to the file, `serve` saying what it does, and `pretrained --replace` under
the run lock."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_args
from PIL import Image
from typer.testing import CliRunner

from vqprior.cli import app
from vqprior.datasets.mnist import load_mnist_offline
from vqprior.errors import UserError

runner = CliRunner()
NAMES = "zero one two three four five six seven eight nine".split()
SORTED = sorted(NAMES)  # a folder's classes are its subfolders in sorted order: eight=0, five=1, ...
SEVEN, ONE, FOUR, NINE = (SORTED.index(n) for n in ("seven", "one", "four", "nine"))


def write_digit_folder(root, train=600, test=200):
    """MNIST digits as PNGs under English class names: root/train/seven/00042.png, root/test/..."""
    for split, count in (("train", train), ("test", test)):
        data = load_mnist_offline(split)
        for i in range(count):
            folder = root / split / NAMES[int(data.labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.images[i, 0].numpy()).save(folder / f"{i:05d}.png")
    return root


def folder_args(root):
    return ["--set", 'data.source="folder"', "--set", f'data.root="{root}"']


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    where = tmp_path_factory.mktemp("own")
    digits = write_digit_folder(where / "my_digits")
    outputs = []
    for stage in (1, 2, 3):
        result = runner.invoke(
            app,
            ["run-stage", str(stage), *tiny_args(where / "artifacts"), *folder_args(digits)],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    return where, outputs


def generate(where, *args):
    return runner.invoke(
        app,
        ["generate", "--out-dir", str(where / "artifacts"), "--device", "cpu", *map(str, args)],
        catch_exceptions=False,
    )


def test_stage_1_lists_the_classes_with_index_name_and_count(folder_run):
    _, (stage1, *_) = folder_run
    flat = " ".join(stage1.split())
    counts = np.bincount(load_mnist_offline("train").labels[:600].numpy(), minlength=10)
    for i, name in enumerate(SORTED):
        assert f"{i} {name}: {counts[NAMES.index(name)]}" in flat, flat


def test_label_mix_and_morph_by_name_on_the_command_line(folder_run):
    where, _ = folder_run
    made = generate(where, "--label", "seven", "--per-class", 3, "--out", where / "7s.npz")
    assert made.exit_code == 0, made.output
    saved = np.load(where / "7s.npz")
    assert saved["labels"].tolist() == [SEVEN] * 3 and saved["class_names"].tolist() == SORTED
    mixed = generate(where, "--mix", "seven:0.5,one:0.5", "--per-class", 2, "--out", where / "mix.npz")
    assert mixed.exit_code == 0, mixed.output
    weights = np.load(where / "mix.npz")["label_weights"]
    expected = np.zeros((2, 10))
    expected[:, [SEVEN, ONE]] = 0.5
    assert weights.shape == (2, 10) and np.allclose(weights, expected)
    morphed = generate(where, "--morph", "four:nine", "--steps", 3, "--per-class", 2, "--out", where / "m.npz")
    assert morphed.exit_code == 0, morphed.output
    strips = np.load(where / "m.npz")["label_weights"].reshape(2, 3, 10)
    assert np.allclose(strips[:, 0, FOUR], 1) and np.allclose(strips[:, -1, NINE], 1)
    sheet = generate(where, "--morph", "four:nine", "--steps", 3, "--out", where / "m.png")
    assert sheet.exit_code == 0 and (where / "m.png").is_file(), sheet.output


def test_a_mistyped_or_missing_class_is_one_line_that_suggests_or_lists(folder_run, monkeypatch):
    where, _ = folder_run
    import vqprior.api
    import vqprior.stages.s4_sample

    def no_loading(*a, **k):
        raise AssertionError("a bad class must be refused before the models are loaded")

    for module in (vqprior.api, vqprior.stages.s4_sample):
        monkeypatch.setattr(module, "load_prior", no_loading)
        monkeypatch.setattr(module, "load_vqvae", no_loading)
    typo = generate(where, "--label", "sevn")
    assert typo.exit_code == 2 and "did you mean 'seven'?" in typo.output
    errors = [line for line in typo.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in typo.output
    wide = runner.invoke(
        app, ["run-stage", "4", *tiny_args(where / "artifacts"), "--label", "12"], catch_exceptions=False
    )
    assert wide.exit_code == 2 and "out of range" in wide.output and "7 three" in " ".join(wide.output.split())
    mix = generate(where, "--mix", "seven:0.5,elven:0.5")
    assert mix.exit_code == 2 and "'elven' is not a class" in mix.output


def test_the_api_takes_names_and_saves_labelled_sheets_without_overwriting(folder_run):
    from vqprior.api import Run

    where, _ = folder_run
    run = Run(where / "artifacts" / "t", device="cpu")
    assert run.class_names == SORTED
    drawn = run.generate(labels=["seven", "one", 7], seed=1)
    assert drawn.labels.tolist() == [SEVEN, ONE, 7] and drawn.images.shape == (3, 1, 28, 28)
    morph = run.morph("one", "seven", steps=3, n=2)
    assert morph.captions == ["one to seven"] * 2 and morph.images.shape[0] == 6
    path = morph.save(where / "api.png")
    first = path.read_bytes()
    with pytest.raises(UserError, match="exists"):
        run.generate(labels=["seven"], seed=2).save(path)
    assert path.read_bytes() == first
    run.generate(labels=["seven"], seed=2).save(path, replace=True)
    assert path.read_bytes() != first
    with pytest.raises(UserError, match="did you mean 'nine'"):
        run.generate(labels=["nien"])


def test_mistyped_commands_and_settings_suggest_the_right_one(tmp_path):
    command = subprocess.run([sys.executable, "-m", "vqprior", "genrate"], capture_output=True, text=True, cwd=tmp_path)
    assert command.returncode == 2 and "Did you mean 'generate'?" in command.stdout + command.stderr
    assert "Traceback" not in command.stdout + command.stderr
    setting = runner.invoke(app, ["run-stage", "1", *tiny_args(tmp_path), "--set", "prior.epoch=3"])
    assert setting.exit_code == 2 and "did you mean prior.epochs?" in setting.output
    assert not (tmp_path / "t").exists()


def test_config_file_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    project = tmp_path / "project"
    write_digit_folder(project / "images", train=100, test=200)
    (project / "run.toml").write_text('[data]\nsource = "folder"\nroot = "images"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the file's folder, not the current one, anchors "images"
    args = ["run-stage", "1", "--config", str(project / "run.toml"), *tiny_args(tmp_path / "artifacts")]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "artifacts" / "t" / "stage1" / "config.json").read_text())
    assert saved["data"]["root"] == str((project / "images").resolve())


def test_serve_says_loading_at_once_and_the_url_once_it_listens(monkeypatch, tmp_path):
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    import uvicorn

    import vqprior.serve.app

    seen = []

    def fake_create_app(run_dir, *a, **k):
        seen.append("create_app")
        return object()

    async def no_socket(self, *a, **k):
        seen.append("startup")

    def run_startup(self):
        asyncio.run(self.startup())

    monkeypatch.setattr(vqprior.serve.app, "create_app", fake_create_app)
    monkeypatch.setattr(uvicorn.Server, "startup", no_socket)
    monkeypatch.setattr(uvicorn.Server, "run", run_startup)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["serve", "--pretrained", "--port", "7999"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("loading ") and "serving" in lines[-1] and "http://127.0.0.1:7999/" in lines[-1]
    assert seen == ["create_app", "startup"]


def test_pretrained_replace_waits_for_no_one_and_keeps_the_folder_while_in_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["pretrained", "mnist"]).exit_code == 0
    run = tmp_path / "artifacts" / "mnist-pretrained"
    (run / "stage4" / "extra.txt").write_text("a reader's file")  # a change --replace would undo
    fd = os.open(run / ".lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process is writing the run
        os.pwrite(fd, b"4242", 0)
        busy = runner.invoke(app, ["pretrained", "mnist", "--replace"])
        assert busy.exit_code == 2 and "in use by process 4242" in busy.output
        assert (run / "stage4" / "extra.txt").is_file()
    finally:
        os.close(fd)
    done = runner.invoke(app, ["pretrained", "mnist", "--replace"])
    assert done.exit_code == 0 and not (run / "stage4" / "extra.txt").exists(), done.output


def test_a_folder_split_mixes_its_classes_so_its_slices_hold_every_class(folder_run):
    from vqprior.config import DataSection
    from vqprior.datasets import load_split, split_holdout

    where, _ = folder_run
    train = load_split(DataSection(source="folder", root=str(where / "my_digits")), "train")
    _, valid = split_holdout(train)  # the last 1/6: in sorted order it would be only "two" and "zero"
    assert len(set(valid.labels.tolist())) == 10 and len(set(train.limit(60).labels.tolist())) >= 8
    again = load_split(DataSection(source="folder", root=str(where / "my_digits")), "train")
    assert torch.equal(again.images, train.images)  # a fixed order
