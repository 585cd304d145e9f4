"""The stages under torchrun (CPU, gloo, 2 processes): same artifacts as one process, resumable across world sizes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import tiny_args
from vqprior.cli import app

runner = CliRunner()
# small enough for seconds, big enough that a batch splits in two and dead codes get re-seeded
EXTRA = ["--set", "data.train_limit=256", "--set", "vqvae.batch_size=32", "--set", "prior.batch_size=32", "--set", "prior.ema_decay=0.9"]


def torchrun(out, *args, nproc=2, name="t", last=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "vqprior",
           *map(str, args), *tiny_args(out, name), *EXTRA, *last]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def single(out, *args, name="t"):
    result = runner.invoke(app, [*map(str, args), *tiny_args(out, name), *EXTRA], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The four stages once under torchrun with 2 processes and once in this process."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    for stage in (1, 2, 3, 4):
        result = torchrun(two, "run-stage", stage)
        assert result.returncode == 0, result.stderr[-3000:]
        single(one, "run-stage", stage)
    return two / "t", one / "t"


def test_two_processes_write_the_artifacts_of_one(both):
    two, one = both
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        assert sorted(p.name for p in (two / stage).iterdir()) == sorted(p.name for p in (one / stage).iterdir())
    assert not (two / ".lock").exists() and not list(two.glob(".stage*"))


@pytest.mark.parametrize("stage,file,tolerance", [
    # float32: a nearest-code choice that flips on the last bit moves the VQ-VAE by ~1e-3 of a tensor's scale
    ("stage1", "vqvae.safetensors", 5e-3),
    ("stage3", "prior.safetensors", 1e-5), ("stage3", "prior_last.safetensors", 1e-5)])
def test_two_processes_train_the_weights_of_one(both, stage, file, tolerance):
    # the same global batches, the same dead-code re-seeding and label dropout: equal up to float summation order
    a, b = load_file(str(both[0] / stage / file)), load_file(str(both[1] / stage / file))
    for k in a:
        if a[k].is_floating_point():
            scale = b[k].abs().max().clamp_min(1e-6)
            assert (a[k] - b[k]).abs().max() <= tolerance * scale, k


def test_stage_2_on_two_processes_writes_the_codes_of_one(both, tmp_path):
    # encode with the single-process VQ-VAE on 2 processes: the codes must be identical
    import shutil

    shutil.copytree(both[1] / "stage1", tmp_path / "t" / "stage1")
    result = torchrun(tmp_path, "run-stage", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    for split in ("train", "test"):
        assert np.array_equal(np.load(tmp_path / "t" / "stage2" / f"{split}_codes.npy"), np.load(both[1] / "stage2" / f"{split}_codes.npy"))


def test_stage_4_on_two_processes_draws_the_images_of_one(both, tmp_path):
    import shutil

    for stage in ("stage1", "stage2", "stage3"):
        shutil.copytree(both[1] / stage, tmp_path / "t" / stage)
    result = torchrun(tmp_path, "run-stage", 4, "--set", "sample.per_class=70")  # 700 maps: 14 noise blocks over 2 processes
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(tmp_path / "t", tmp_path / "solo" / "t", ignore=shutil.ignore_patterns("stage4"))
    single(tmp_path / "solo", "run-stage", 4, "--per-class", 70)
    a = np.load(tmp_path / "t" / "stage4" / "samples.npz")["images"]
    b = np.load(tmp_path / "solo" / "t" / "stage4" / "samples.npz")["images"]
    assert a.shape == (700, 1, 28, 28) and np.array_equal(a, b)


def test_batch_that_does_not_divide_among_processes_is_one_line(tmp_path):
    result = torchrun(tmp_path, "run-stage", 1, last=["--set", "vqvae.batch_size=33"])
    assert result.returncode != 0 and "does not divide among 2 processes" in result.stderr


def test_interrupted_two_process_stage_3_resumes_in_one(both, tmp_path):
    import shutil
    import signal
    import time

    for stage in ("stage1", "stage2"):
        shutil.copytree(both[0] / stage, tmp_path / "t" / stage)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "vqprior", "run-stage", "3",
           *tiny_args(tmp_path, "t"), *EXTRA, "--set", "prior.epochs=40", "--set", "run.checkpoint_every=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    ckpt = tmp_path / "t" / ".checkpoints" / "stage3.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert ckpt.exists(), proc.communicate()[1][-3000:]
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches every process of the group
    _, err = proc.communicate(timeout=120)
    assert "checkpoint saved" in err, err[-3000:]
    result = runner.invoke(app, ["run-stage", "3", *tiny_args(tmp_path, "t"), *EXTRA, "--set", "prior.epochs=40",
                                 "--set", "run.checkpoint_every=2"], catch_exceptions=False)
    assert result.exit_code == 0 and "resuming from epoch" in " ".join(result.output.split()), result.output
    assert (tmp_path / "t" / "stage3" / "prior.safetensors").is_file()
