"""Incremental `vqprior run`, stale inputs, the run lock, signals, and the prior contract."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import tiny_args
from PIL import Image
from typer.testing import CliRunner

from vqprior.cli import app
from vqprior.errors import UserError
from vqprior.models.priors import check_prior
from vqprior.models.priors.base import Prior
from vqprior.run_lock import run_lock

runner = CliRunner()


class Result:
    """CLI result with the console's line wrapping undone."""

    def __init__(self, result):
        self.exit_code, self.output = result.exit_code, " ".join(result.output.split())


def invoke(*args):
    return Result(runner.invoke(app, [str(a) for a in args], catch_exceptions=False))


def manifests(run_dir):
    return {
        s: (run_dir / f"stage{s}" / "manifest.json").read_text()
        for s in (1, 2, 3, 4)
        if (run_dir / f"stage{s}").is_dir()
    }


def test_run_is_incremental_like_make(tmp_path):
    first = invoke("run", *tiny_args(tmp_path), "--per-class", 2)
    assert first.exit_code == 0, first.output
    run_dir = tmp_path / "t"
    before = manifests(run_dir)
    again = invoke("run", *tiny_args(tmp_path), "--per-class", 2)
    assert again.exit_code == 0 and again.output.count("up to date") == 4, again.output
    assert manifests(run_dir) == before
    # a new sampling setting redoes stage 4 only; a new prior setting redoes stages 3 and 4
    more = invoke("run", *tiny_args(tmp_path), "--per-class", 3)
    assert more.output.count("up to date") == 3 and "stage 4 done" in more.output
    assert "(replaced the samples made" in more.output  # said, not silent
    # a new prior setting would retrain the finished prior: refused in one line, nothing touched ...
    refused = invoke("run", *tiny_args(tmp_path), "--per-class", 3, "--set", "prior.lr=0.002")
    errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert (
        refused.exit_code == 2
        and len(errors) == 1
        and "prior.lr 0.003 -> 0.002" in errors[0]
        and "--replace" in errors[0]
    ), refused.output
    assert "stage 3 done" not in refused.output
    after_refusal = manifests(run_dir)
    # ... and a preset with other settings is refused the same way (it would replace the VQ-VAE and the prior)
    preset = invoke(
        "run", *tiny_args(tmp_path)[:10], "--preset", "quick"
    )  # the folder, device and data of the tiny run
    assert preset.exit_code == 2 and "would replace the VQ-VAE (stage 1) and the prior (stage 3)" in preset.output, (
        preset.output
    )
    assert manifests(run_dir) == after_refusal
    # --replace retrains it there: stages 3 and 4 redone
    prior = invoke("run", *tiny_args(tmp_path), "--per-class", 3, "--set", "prior.lr=0.002", "--replace")
    assert prior.output.count("up to date") == 2 and "stage 3 done" in prior.output and "stage 4 done" in prior.output
    # --restart redoes everything
    restart = invoke("run", *tiny_args(tmp_path), "--per-class", 3, "--set", "prior.lr=0.002", "--restart")
    assert "up to date" not in restart.output and "stage 1 done" in restart.output


def test_run_after_an_interrupted_stage_3_resumes_it_without_retraining_1_and_2(tmp_path):
    from test_resume import SignalAfter

    from vqprior.config_files import load_config
    from vqprior.stages import s3_prior

    assert invoke("run-stage", 1, *tiny_args(tmp_path)).exit_code == 0
    assert invoke("run-stage", 2, *tiny_args(tmp_path)).exit_code == 0
    run_dir = tmp_path / "t"
    before = manifests(run_dir)
    args = tiny_args(tmp_path)
    cfg = load_config(overrides=[args[i + 1] for i in range(0, len(args), 2) if args[i] == "--set"] + ["run.name=t"])
    with pytest.raises(UserError):
        s3_prior.run(cfg, SignalAfter(5))
    assert (run_dir / ".checkpoints" / "stage3.pt").is_file()
    result = invoke("run", *tiny_args(tmp_path), "--per-class", 1)
    assert result.exit_code == 0, result.output
    assert result.output.count("up to date") == 2 and "stage 3: resuming from epoch 2 step 0" in result.output
    assert {s: m for s, m in manifests(run_dir).items() if s < 3} == before


def test_run_resume_needs_an_interrupted_stage(tmp_path):
    result = invoke("run", *tiny_args(tmp_path), "--resume")
    assert result.exit_code == 2 and "no interrupted stage to resume" in result.output


def test_stage_3_refuses_codes_of_a_replaced_vqvae_before_training(tmp_path):
    for stage in (1, 2):
        assert invoke("run-stage", stage, *tiny_args(tmp_path)).exit_code == 0
    assert invoke("run-stage", 1, *tiny_args(tmp_path), "--set", "vqvae.codebook_size=12").exit_code == 0
    result = invoke("run-stage", 3, *tiny_args(tmp_path))
    assert result.exit_code == 2 and "re-run stage 2" in result.output, result.output
    assert not (tmp_path / "t" / ".checkpoints").exists() and not (tmp_path / "t" / "stage3").exists()


@pytest.mark.parametrize("stage", [2, 4])
@pytest.mark.parametrize("flag", ["--resume", "--restart"])
def test_resume_flags_are_refused_on_stages_without_training(tmp_path, stage, flag):
    result = invoke("run-stage", stage, *tiny_args(tmp_path), flag)
    assert result.exit_code == 2 and "apply to the training stages" in result.output


def test_seed_changes_the_images(tmp_path):
    for stage in (1, 2, 3):
        assert invoke("run-stage", stage, *tiny_args(tmp_path)).exit_code == 0
    images = {}
    for seed in (5, 6):
        assert invoke("run-stage", 4, *tiny_args(tmp_path), "--per-class", 4, "--seed", seed).exit_code == 0
        npz = np.load(tmp_path / "t" / "stage4" / "samples.npz")
        images[seed] = npz["codes"], npz["images"]
    assert (images[5][0] != images[6][0]).mean() > 0.3 and (images[5][1] != images[6][1]).any()


def _hold_lock(run_dir, start, results):
    start.wait()
    try:
        with run_lock(run_dir):
            results.put("took")
            time.sleep(1.5)
    except UserError:
        results.put("refused")


def test_only_one_of_many_processes_takes_the_run_lock(tmp_path):
    (tmp_path / "r").mkdir()
    ctx = mp.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_hold_lock, args=(tmp_path / "r", start, results)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(30)
    outcome = sorted(results.get(timeout=5) for _ in procs)
    assert outcome == ["refused", "refused", "refused", "took"]
    assert not (tmp_path / "r" / ".lock").exists(), "lock file left behind"


def test_a_killed_holder_does_not_block_the_next_run(tmp_path):
    code = f"from vqprior.run_lock import run_lock\nimport os\nwith run_lock({str(tmp_path / 'r')!r}):\n    os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert (tmp_path / "r" / ".lock").exists()  # the file stays, but the kernel released the lock
    with run_lock(tmp_path / "r"):
        pass


@pytest.mark.parametrize("stage", [2, 4])
def test_sigterm_during_stage_2_or_4_leaves_no_lock_or_temporary_folder(tmp_path, stage):
    for s in (1, 2, 3):
        assert invoke("run-stage", s, *tiny_args(tmp_path, "sig")).exit_code == 0
    extra = (
        ["--per-class", "200000", "--set", "sample.limit=2000000", "--set", "sample.batch_size=50"]
        if stage == 4
        else []
    )
    args = [sys.executable, "-m", "vqprior", "run-stage", str(stage), *tiny_args(tmp_path, "sig"), *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "sig"
    deadline = time.monotonic() + 60
    while not any(run_dir.glob(".stage*")) and not list(run_dir.glob(".lock")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5 if stage == 4 else 0.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0 or "done in" in err:
        pytest.skip("the stage finished before the signal arrived")
    assert proc.returncode in (130, -signal.SIGINT) and "Traceback" not in err, err
    assert not (run_dir / ".lock").exists() and not list(run_dir.glob(".stage*"))


def test_sigterm_is_caught_only_after_every_import(tmp_path):
    """A SIGTERM that lands inside an extension module's import (triton's, which torchvision pulls in) came out as an
    ImportError that torch swallows, and the run went on as if never signalled: the handler waits for the imports."""
    code = (
        "import signal, sys\n"
        "from vqprior.cli import main, train\n"
        "def check(*args, **kwargs):\n"
        "    print(signal.getsignal(signal.SIGTERM) is train._terminate, 'torchvision' in sys.modules,"
        " 'vqprior.stages.s4_sample' in sys.modules)\n"
        "train._run_stages = check\n"
        f"sys.argv = ['vqprior', 'run-stage', '4', *{tiny_args(tmp_path, 'imports')!r}]\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]


def test_an_interrupt_wrapped_by_class_creation_is_one_line():
    import typer

    from vqprior.cli.common import _one_line_errors

    class Interrupting:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt  # Python 3.11 raises it as a RuntimeError caused by the KeyboardInterrupt

    with pytest.raises(typer.Exit) as e, _one_line_errors("interrupted"):
        type("Created", (), {"field": Interrupting()})
    assert e.value.exit_code == 130


def test_ctrl_c_during_the_epoch_end_evaluation_is_honoured(tmp_path, monkeypatch):
    from test_resume import assert_same, config, weights

    from vqprior.stages import s1_vqvae
    from vqprior.training import Interrupted

    ref = config(tmp_path / "a", "x")
    s1_vqvae.run(ref)
    real = s1_vqvae.reconstruction_metrics
    calls = []

    def interrupting(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(s1_vqvae, "reconstruction_metrics", interrupting)
    cfg = config(tmp_path / "b", "x")
    with pytest.raises(Interrupted, match="epoch 2 step 0"):
        s1_vqvae.run(cfg)
    monkeypatch.setattr(s1_vqvae, "reconstruction_metrics", real)
    s1_vqvae.run(cfg)
    assert_same(
        weights(tmp_path / "a" / "x" / "stage1" / "vqvae.safetensors"),
        weights(tmp_path / "b" / "x" / "stage1" / "vqvae.safetensors"),
    )
    history = json.loads((tmp_path / "b" / "x" / "stage1" / "metrics.json").read_text())["epochs"]
    assert [row["epoch"] for row in history] == [1, 2]


def test_channels_are_decided_over_the_whole_image_folder(tmp_path):
    root = tmp_path / "imgs"
    for split, n in (("train", 30), ("test", 10)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((28, 28), 10 * i % 255, np.uint8)).save(root / split / f"{i}.png")
    Image.new("CMYK", (28, 28), (10, 200, 30, 0)).save(root / "train" / "colour.jpg")
    from vqprior.config import DataSection
    from vqprior.datasets import load_split

    cfg = DataSection(source="folder", root=str(root))
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert train.images.shape[1:] == test.images.shape[1:] == (3, 28, 28)


class Peeking(Prior):
    """Looks at the code it predicts: not causal."""

    def __init__(self, codebook_size, num_classes=0):
        super().__init__()
        self.codebook_size, self.num_classes = codebook_size, num_classes
        self.embed = torch.nn.Embedding(codebook_size, codebook_size)

    def logits(self, codes, cond):
        return self.embed(codes).permute(0, 3, 1, 2)


def test_the_prior_contract_catches_a_non_causal_prior():
    with pytest.raises(UserError, match="not causal"):
        check_prior(Peeking(8), "x:Peeking")
    with pytest.raises(UserError, match="must subclass"):
        check_prior(torch.nn.Linear(2, 2), "x:Linear")


def test_out_dir_on_run_and_run_stage_means_what_it_means_on_every_other_command(tmp_path):
    args = tiny_args(tmp_path / "unused")[2:]  # the tiny run without its run.out_dir
    first = invoke("run-stage", 1, *args, "--out-dir", tmp_path / "o")
    assert first.exit_code == 0, first.output
    assert (tmp_path / "o" / "t" / "stage1" / "manifest.json").is_file() and not (tmp_path / "unused").exists()
    rest = invoke("run", *args, "--out-dir", tmp_path / "o", "--per-class", 1)
    assert rest.exit_code == 0 and "stage 1 up to date" in rest.output, rest.output
    assert invoke("report", "--out-dir", tmp_path / "o", "--name", "t").exit_code == 0
