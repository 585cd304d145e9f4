"""Interrupted training resumes to bitwise the same weights as an uninterrupted run."""

import os
import signal

import pytest
import torch
from conftest import tiny_args
from safetensors.torch import load_file

from vqprior.config_files import load_config
from vqprior.reporter import Reporter
from vqprior.stages import s1_vqvae, s2_codes, s3_prior
from vqprior.training import Interrupted


class SignalAfter(Reporter):
    """Sends this process a real signal after `after` training steps (counted over all epochs)."""

    def __init__(self, after, sig=signal.SIGINT):
        self.after, self.sig, self.seen = after, sig, 0

    def track(self, items, total, description):
        for item in items:
            yield item
            self.seen += 1
            if self.seen == self.after:
                os.kill(os.getpid(), self.sig)


class CrashAfter(Reporter):
    """Dies after `after` steps without any chance to save: like a killed process."""

    def __init__(self, after):
        self.after, self.seen = after, 0

    def track(self, items, total, description):
        for item in items:
            yield item
            self.seen += 1
            if self.seen == self.after:
                raise RuntimeError("simulated crash")


def config(out, name, **extra):
    args = tiny_args(out, name)
    sets = [args[i + 1] for i in range(0, len(args), 2) if args[i] == "--set"] + [f"run.name={name}"]
    sets += [
        "vqvae.epochs=2",
        "vqvae.batch_size=32",
        "prior.epochs=2",
        "prior.batch_size=32",
        "run.checkpoint_every=5",
        "prior.ema_decay=0.9",
    ]
    sets += [f"{k}={v}" for k, v in extra.items()]
    return load_config(overrides=sets)


def weights(path):
    return load_file(str(path))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    cfg = config(out, "ref")
    s1_vqvae.run(cfg)
    s2_codes.run(cfg)
    s3_prior.run(cfg)
    return out


@pytest.mark.parametrize("after,sig", [(7, signal.SIGINT), (19, signal.SIGTERM), (30, signal.SIGINT)])
def test_stage1_signal_then_resume_is_bitwise_identical(reference, tmp_path, after, sig):
    cfg = config(tmp_path, "ref")
    with pytest.raises(Interrupted, match="checkpoint saved"):
        s1_vqvae.run(cfg, SignalAfter(after, sig))
    assert (tmp_path / "ref" / ".checkpoints" / "stage1.pt").is_file()
    assert not (tmp_path / "ref" / "stage1").exists()
    s1_vqvae.run(cfg)
    assert_same(
        weights(reference / "ref" / "stage1" / "vqvae.safetensors"),
        weights(tmp_path / "ref" / "stage1" / "vqvae.safetensors"),
    )
    assert not (tmp_path / "ref" / ".checkpoints").exists(), "checkpoint left after a finished stage"


def test_stage1_crash_resumes_from_last_periodic_checkpoint(reference, tmp_path):
    cfg = config(tmp_path, "ref")
    with pytest.raises(RuntimeError, match="simulated crash"):
        s1_vqvae.run(cfg, CrashAfter(13))  # last checkpoint was at step 10
    ckpt = torch.load(tmp_path / "ref" / ".checkpoints" / "stage1.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 10)
    s1_vqvae.run(cfg)
    assert_same(
        weights(reference / "ref" / "stage1" / "vqvae.safetensors"),
        weights(tmp_path / "ref" / "stage1" / "vqvae.safetensors"),
    )


def test_stage3_signal_then_resume_is_bitwise_identical(reference, tmp_path):
    import shutil

    for stage in ("stage1", "stage2"):
        shutil.copytree(reference / "ref" / stage, tmp_path / "ref" / stage)
    cfg = config(tmp_path, "ref")
    with pytest.raises(Interrupted):
        s3_prior.run(cfg, SignalAfter(23))
    s3_prior.run(cfg)
    for name in ("prior.safetensors", "prior_last.safetensors"):  # the EMA and the last weights
        assert_same(weights(reference / "ref" / "stage3" / name), weights(tmp_path / "ref" / "stage3" / name))


def test_same_config_and_seed_give_the_same_weights(reference, tmp_path):
    cfg = config(tmp_path, "ref")
    s1_vqvae.run(cfg)
    assert_same(
        weights(reference / "ref" / "stage1" / "vqvae.safetensors"),
        weights(tmp_path / "ref" / "stage1" / "vqvae.safetensors"),
    )
    other = config(tmp_path, "other", **{"run.seed": 1})
    s1_vqvae.run(other)
    a, b = (
        weights(reference / "ref" / "stage1" / "vqvae.safetensors"),
        weights(tmp_path / "other" / "stage1" / "vqvae.safetensors"),
    )
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_from_another_config_is_refused(tmp_path):
    cfg = config(tmp_path, "x")
    with pytest.raises(Interrupted):
        s1_vqvae.run(cfg, SignalAfter(3))
    from vqprior.errors import UserError

    with pytest.raises(UserError, match="different config.*--restart"):
        s1_vqvae.run(config(tmp_path, "x", **{"vqvae.lr": 0.01}))
    s1_vqvae.run(config(tmp_path, "x", **{"vqvae.lr": 0.01}), resume="restart")
    assert (tmp_path / "x" / "stage1" / "vqvae.safetensors").is_file()


@pytest.mark.parametrize("key,value", [("epoch", 10**6), ("epoch", 0), ("step", -1), ("n_batches", 2.5)])
def test_a_checkpoint_with_impossible_counters_is_one_line(tmp_path, key, value):
    cfg = config(tmp_path, "x")
    with pytest.raises(Interrupted):
        s1_vqvae.run(cfg, SignalAfter(3))
    path = tmp_path / "x" / ".checkpoints" / "stage1.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt[key] = value
    torch.save(ckpt, path)
    from vqprior.errors import UserError

    with pytest.raises(UserError, match="not a vqprior checkpoint of this stage.*--restart"):
        s1_vqvae.run(cfg)


def test_signal_handlers_are_restored_after_training(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    s1_vqvae.run(config(tmp_path, "h", **{"vqvae.epochs": 1}))
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_on_a_real_process_saves_and_says_how_to_resume(tmp_path):
    """SIGINT to `vqprior run-stage 1`: exit 130, one line naming the way back, a checkpoint, no stage folder."""
    import subprocess
    import sys
    import time

    args = [
        sys.executable,
        "-m",
        "vqprior",
        "run-stage",
        "1",
        *tiny_args(tmp_path, "sig"),
        "--set",
        "vqvae.epochs=50",
        "--set",
        "vqvae.batch_size=8",
        "--set",
        "run.checkpoint_every=1",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "sig" / ".checkpoints" / "stage1.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert ckpt.exists(), "training never checkpointed"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    assert ckpt.exists() and not (tmp_path / "sig" / "stage1").exists()
