"""End to end through the CLI on a tiny config: every stage's artifacts, and what happens out of order."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_args
from PIL import Image
from typer.testing import CliRunner

from vqprior.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    for stage in (1, 2, 3):
        result = invoke("run-stage", stage, *tiny_args(out))
        assert result.exit_code == 0, result.output
    result = invoke("run-stage", 4, *tiny_args(out), "--per-class", 3, "--label", 2, "--label", 7, "--seed", 5)
    assert result.exit_code == 0, result.output
    return out / "t"


def test_every_stage_writes_its_artifacts(tiny_run):
    expected = {
        "stage1": {
            "vqvae.safetensors",
            "config.json",
            "metrics.json",
            "metrics.jsonl",
            "reconstructions.png",
            "reconstructions.gif",
            "epochs",
            "manifest.json",
        },
        "stage2": {"train_codes.npy", "train_labels.npy", "test_codes.npy", "test_labels.npy", "manifest.json"},
        "stage3": {
            "prior.safetensors",
            "config.json",
            "metrics.json",
            "metrics.jsonl",
            "samples.gif",
            "epochs",
            "manifest.json",
        },
        "stage4": {"samples.png", "samples.npz", "rows.json", "manifest.json"},
    }
    for stage, files in expected.items():
        assert {p.name for p in (tiny_run / stage).iterdir()} == files
    assert not list(tiny_run.glob(".stage*")), "temporary folders left behind"
    assert not (tiny_run / "progress").exists(), "live progress folder left behind"


def test_one_picture_and_one_metrics_line_per_epoch(tmp_path, monkeypatch):
    import vqprior.stages.s3_prior as s3

    monkeypatch.setattr(s3, "CURVE_MAPS", 50)  # of the tiny run's 200 test maps
    result = invoke(
        "run",
        *tiny_args(tmp_path),
        "--set",
        "vqvae.epochs=2",
        "--set",
        "prior.epochs=3",
        "--set",
        "prior.ema_decay=0",
        "--per-class",
        1,
    )
    assert result.exit_code == 0, result.output
    for stage, gif, epochs in (("stage1", "reconstructions.gif", 2), ("stage3", "samples.gif", 3)):
        folder = tmp_path / "t" / stage
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in lines] == list(range(1, epochs + 1))
        assert lines == json.loads((folder / "metrics.json").read_text())["epochs"][:epochs] or all(
            set(a) <= set(b) for a, b in zip(lines, json.loads((folder / "metrics.json").read_text())["epochs"])
        )
        if stage == "stage3":  # the learning curve on the first CURVE_MAPS test maps, the last epoch on all of them
            assert [row["test_maps"] for row in lines] == [50, 50, 200]
            codes = np.load(tmp_path / "t" / "stage2" / "test_codes.npy")
            assert len(codes) == 200
        assert sorted(p.name for p in (folder / "epochs").iterdir()) == [
            f"epoch_{e:03d}.png" for e in range(1, epochs + 1)
        ]
        with Image.open(folder / gif) as animation:
            frame = Image.open(folder / "epochs" / "epoch_001.png").size
            # each GIF frame is the epoch's picture under a 14-pixel strip that names the epoch
            assert animation.n_frames == epochs and animation.size == (frame[0], frame[1] + 14)


def test_code_maps_are_small_ints_matching_the_manifest(tiny_run):
    manifest = json.loads((tiny_run / "stage2" / "manifest.json").read_text())
    codes = np.load(tiny_run / "stage2" / "train_codes.npy", mmap_mode="r")
    assert codes.dtype == np.uint8 and codes.shape == (600, 7, 7)
    assert manifest["codebook_size"] == 16 and manifest["grid"] == [7, 7] and manifest["dtype"] == "uint8"
    assert int(codes.max()) < 16
    assert (
        manifest["inputs"]["vqvae"]["sha256"]
        == json.loads((tiny_run / "stage1" / "manifest.json").read_text())["outputs"]["vqvae.safetensors"]
    )


def test_metrics_are_reported(tiny_run):
    s1 = json.loads((tiny_run / "stage1" / "metrics.json").read_text())["final"]
    s3 = json.loads((tiny_run / "stage3" / "metrics.json").read_text())["final"]
    assert 0 < s1["test_usage"] <= 1 and 1 <= s1["test_perplexity"] <= 16
    # the reported reconstruction error is the saved VQ-VAE's, recomputed here on the same 200 test images
    import torch

    from vqprior.config import DataSection
    from vqprior.datasets import load_split
    from vqprior.restore import load_vqvae

    vq = load_vqvae(tiny_run, None, torch.device("cpu")).model
    x = load_split(DataSection(test_limit=200), "test").images.float() / 255
    with torch.no_grad():
        mse = ((vq.reconstruct(x) - x) ** 2).mean().item()
    assert s1["test_recon_mse"] == pytest.approx(mse, rel=1e-4)
    assert s3["test_bits_per_map"] == pytest.approx(49 * s3["test_bits_per_code"])
    # the reported figure is the saved prior's cross-entropy on the test codes, recomputed here
    import torch
    import torch.nn.functional as F

    from vqprior.restore import load_prior

    prior = load_prior(tiny_run, None, torch.device("cpu")).model
    codes = torch.from_numpy(np.load(tiny_run / "stage2" / "test_codes.npy").astype(np.int64))
    labels = torch.from_numpy(np.load(tiny_run / "stage2" / "test_labels.npy"))
    with torch.no_grad():
        nats = F.cross_entropy(prior(codes, labels), codes)
    assert s3["test_bits_per_code"] == pytest.approx(nats.item() / np.log(2), rel=1e-5)


def test_samples_have_the_requested_classes_and_shapes(tiny_run):
    npz = np.load(tiny_run / "stage4" / "samples.npz")
    assert npz["images"].shape == (6, 1, 28, 28) and npz["images"].dtype == np.uint8
    assert npz["codes"].shape == (6, 7, 7)
    assert npz["labels"].tolist() == [2, 2, 2, 7, 7, 7]
    width, height = Image.open(tiny_run / "stage4" / "samples.png").size
    assert height == 2 * 30 + 2 and 3 * 30 + 2 < width < 3 * 30 + 2 + 40  # one row per class, its name on the left


def test_same_seed_same_images(tiny_run, tmp_path):
    first = np.load(tiny_run / "stage4" / "samples.npz")["images"]
    result = invoke(
        "run-stage", 4, *tiny_args(tiny_run.parent), "--per-class", 3, "--label", 2, "--label", 7, "--seed", 5
    )
    assert result.exit_code == 0
    assert np.array_equal(first, np.load(tiny_run / "stage4" / "samples.npz")["images"])


def test_soft_label_sampling(tiny_run):
    result = invoke("run-stage", 4, *tiny_args(tiny_run.parent), "--per-class", 2, "--mix", "3:0.5,8:0.5")
    assert result.exit_code == 0, result.output
    weights = np.load(tiny_run / "stage4" / "samples.npz")["label_weights"]
    assert weights.shape == (2, 10) and weights[0, 3] == 0.5 and weights[0, 8] == 0.5


def test_stage_out_of_order_names_the_missing_stage(tmp_path):
    result = invoke("run-stage", 3, *tiny_args(tmp_path))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "stage 3 needs stage 2" in lines[0] and "vqprior run-stage 2" in lines[0]
    assert not (tmp_path / "t").exists(), "a failed first stage must not leave an empty run folder"


def test_label_out_of_range_is_one_line(tiny_run):
    result = invoke("run-stage", 4, *tiny_args(tiny_run.parent), "--label", 12)
    assert result.exit_code == 2 and "out of range" in result.output and len(result.output.strip().splitlines()) == 1


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "vqprior", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "run-stage" in result.stdout
