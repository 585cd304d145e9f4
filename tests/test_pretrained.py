"""The pretrained MNIST run shipped in the package: an ordinary, verified run folder every command works on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vqprior
from vqprior.cli import app
from vqprior.pretrained import HERE, folder
from vqprior.run_folder import RunFolder

runner = CliRunner()
pytestmark = pytest.mark.skipif(
    not (HERE / "mnist" / "stage3" / "manifest.json").is_file(), reason="no pretrained run packed in this checkout"
)


def test_the_shipped_run_is_verified_plain_data_and_small():
    run_dir = folder("mnist")
    for stage in (1, 2, 3, 4):
        RunFolder(run_dir).read_stage(stage)  # every output's sha256 matches its manifest
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".npy", ".npz", ".png"}
    assert not any(p.name == "prior_last.safetensors" for p in files)
    for npy in run_dir.rglob("*.npy"):
        np.load(npy, allow_pickle=False)  # nothing pickled
    with np.load(run_dir / "stage4" / "samples.npz", allow_pickle=False) as z:
        assert z["images"].dtype == np.uint8
    assert sum(p.stat().st_size for p in files) < 12 * 2**20
    made = json.loads((run_dir / "PRETRAINED.json").read_text())
    assert made["command"].startswith("vqprior run") and "yardstick" in made["machine"] and made["eval"]["n_samples"]


def test_it_generates_digits_the_shipped_classifier_reads_as_their_class():
    import vqprior.evaluation.classifier as classifier_module
    from vqprior.config import DataSection
    from vqprior.datasets import load_split, split_holdout
    from vqprior.evaluation.classifier import load_or_train_classifier, train_classifier

    run = vqprior.load("pretrained:mnist", device="cpu")
    labels = torch.arange(10).repeat_interleave(20)
    images = run.generate(labels=labels, seed=0).images
    fit, _ = split_holdout(load_split(DataSection(), "train"))
    test = load_split(DataSection(test_limit=100), "test")
    trained = []
    original = train_classifier
    classifier_module.train_classifier = lambda *a, **k: trained.append(1) or original(*a, **k)
    try:
        net, info = load_or_train_classifier(fit, test, torch.device("cpu"))
    finally:
        classifier_module.train_classifier = original
    assert not trained, "the MNIST feature network was trained instead of read from the package"
    _, preds = net.features_and_predictions(images)
    assert (preds == labels).double().mean() >= 0.97 and info["test_accuracy"] >= 0.994


def test_the_command_copies_it_as_a_named_run_that_every_command_uses(tmp_path):
    result = runner.invoke(app, ["pretrained", "mnist", "--out-dir", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0 and "mnist-pretrained" in result.output, result.output
    again = runner.invoke(app, ["pretrained", "mnist", "--out-dir", str(tmp_path)], catch_exceptions=False)
    assert again.exit_code == 0  # the same run again: nothing to do
    run_dir = tmp_path / "mnist-pretrained"
    args = ["--out-dir", str(tmp_path), "--name", "mnist-pretrained"]
    stage4 = runner.invoke(
        app,
        ["run-stage", "4", *args, "--label", "3", "--per-class", "4", "--set", 'run.device="cpu"'],
        catch_exceptions=False,
    )
    assert stage4.exit_code == 0, stage4.output
    assert np.load(run_dir / "stage4" / "samples.npz")["images"].shape == (4, 1, 28, 28)
    done = runner.invoke(
        app, ["complete", *args, "--from", "test", "--n", "1", "--erase", "8,8,20,20", "--sweeps", "1"]
    )
    assert done.exit_code == 0, done.output
    (tmp_path / "other").mkdir()
    refused = runner.invoke(app, ["pretrained", "mnist", "--out-dir", str(tmp_path), "--name", "other"])
    assert refused.exit_code != 0 and "--replace" in refused.output


def test_the_one_minute_path_needs_no_name_and_generate_never_overwrites(tmp_path, monkeypatch):
    """README's path: copy the shipped run, then generate with no --name (the one run there is) into a file."""
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["pretrained", "mnist"], catch_exceptions=False).exit_code == 0
    made = runner.invoke(app, ["generate", "--label", "3", "--per-class", "4", "--out", "3s.png", "--device", "cpu"])
    assert made.exit_code == 0 and "mnist-pretrained" in made.output and "3s.png" in made.output, made.output
    with Image.open(tmp_path / "3s.png") as sheet:
        assert sheet.size[1] == 2 * (28 + 2 * 2) and sheet.size[0] > 2 * (4 * 30 + 2)  # one labelled row, scaled 2x
    before = (tmp_path / "3s.png").read_bytes()
    again = runner.invoke(app, ["generate", "--label", "3", "--seed", "1", "--out", "3s.png", "--device", "cpu"])
    assert again.exit_code == 2 and "--replace" in again.output and (tmp_path / "3s.png").read_bytes() == before
    arrays = runner.invoke(app, ["generate", "--label", "3", "--per-class", "2", "--out", "x.npz", "--device", "cpu"])
    assert arrays.exit_code == 0, arrays.output
    saved = np.load(tmp_path / "x.npz")
    assert saved["images"].shape == (2, 1, 28, 28) and saved["labels"].tolist() == [3, 3]
    assert saved["class_names"].tolist() == [str(d) for d in range(10)]
    # a second run: no --name is ambiguous, so the runs are listed
    assert runner.invoke(app, ["pretrained", "mnist", "--name", "second"]).exit_code == 0
    listed = runner.invoke(app, ["generate", "--label", "3"])
    assert listed.exit_code == 2 and "mnist-pretrained, second" in listed.output and "--name" in listed.output
    # a copy that was changed is not taken for the shipped run, and the package is never a target
    (tmp_path / "artifacts" / "second" / "stage1" / "metrics.json").write_text("{}")
    changed = runner.invoke(app, ["pretrained", "mnist", "--name", "second"])
    assert changed.exit_code == 2 and "not an intact copy" in changed.output
    from vqprior.pretrained import HERE

    inside = runner.invoke(app, ["pretrained", "mnist", "--out-dir", str(HERE)])
    assert inside.exit_code == 2 and "inside the installed vqprior package" in inside.output
