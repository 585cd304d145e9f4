"""Devices: training steps that never wait for the host (proved by fullgraph compilation), bf16 autocast, the
torchrun rank -> GPU mapping, the compile fall-back, and a `cuda` group that runs only where there is a GPU."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import registry_prior_kinds, tiny_args
from safetensors.torch import load_file
from typer.testing import CliRunner

from vqprior import components, runtime
from vqprior.cli import app
from vqprior.config import RunSection, VQVAESection, prior_network
from vqprior.errors import UserError
from vqprior.models.vqvae import build_vqvae
from vqprior.optimizer import WeightEMA
from vqprior.reporter import Reporter
from vqprior.runtime import devices
from vqprior.runtime.compile import maybe_compile
from vqprior.stages.s1_vqvae import vqvae_step
from vqprior.stages.s3_prior import prior_step

runner = CliRunner()


def small_vqvae():
    torch.manual_seed(0)
    cfg = VQVAESection(
        codebook_size=16,
        code_dim=8,
        encoder={"target": "conv_encoder", "params": {"hidden": 16}},
        decoder={"target": "conv_decoder", "params": {"hidden": 16}},
    )
    return build_vqvae(cfg, (1, 28, 28))[0].train()


def fullgraph(fn):
    torch._dynamo.reset()
    return torch.compile(
        fn, fullgraph=True, backend="eager"
    )  # a graph break (a host read, a data-dependent branch) raises


def test_the_vqvae_step_has_no_host_sync_or_data_dependent_branch():
    model = small_vqvae()
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    vqvae_step(model, model, images)  # the first step seeds the codebook from the batch (a one-time check)
    twin = copy.deepcopy(model)
    eager = vqvae_step(model, model, images)
    compiled = fullgraph(vqvae_step)(twin, twin, images)
    assert torch.allclose(compiled["loss"], eager["loss"]) and torch.equal(
        compiled["code_counts"], eager["code_counts"]
    )
    assert int(compiled["code_counts"].sum()) == 32 * 7 * 7
    fresh = small_vqvae()  # the very first step, which seeds the codebook, compiles whole too
    assert (
        int(fullgraph(vqvae_step)(fresh, fresh, images)["code_counts"].sum()) == 32 * 7 * 7
        and not fresh.quantizer._needs_init
    )


@pytest.mark.parametrize("kind", registry_prior_kinds())
def test_the_prior_step_has_no_host_sync_or_data_dependent_branch(kind):
    torch.manual_seed(0)
    spec = prior_network(kind)
    model = components.instantiate(components.resolve(spec, codebook_size=16, num_classes=10))
    model.train()
    codes, labels = torch.randint(0, 16, (8, 7, 7)), torch.randint(0, 10, (8,))
    keep = torch.rand(8, 1) >= 0.5
    compiled = fullgraph(prior_step)(model, model, codes, labels, keep)
    assert torch.allclose(compiled["loss"], prior_step(model, model, codes, labels, keep)["loss"], atol=1e-6)


def test_the_weight_ema_update_has_no_host_sync():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ema = WeightEMA(model, 0.9)
    fullgraph(ema.update)(model)
    assert int(ema.n_averaged) == 1 and torch.equal(ema.module[0].weight, model[0].weight)


def test_bf16_autocast_trains_both_stages_on_the_cpu(tmp_path):
    """The bf16 path (the CUDA default) is exercised here on the CPU: it runs, stays finite and learns."""
    result = runner.invoke(
        app,
        ["run", *tiny_args(tmp_path), "--set", 'run.precision="bf16"', "--set", "prior.epochs=2", "--per-class", "1"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "bf16" in result.output
    import json

    s3 = json.loads((tmp_path / "t" / "stage3" / "metrics.json").read_text())["epochs"]
    assert all(np.isfinite(r["train_loss"]) for r in s3) and s3[-1]["test_bits_per_code"] < np.log2(16)
    # each epoch's test likelihood is measured in the training precision; it must agree with fp32 on the saved prior
    import vqprior
    from vqprior.evaluation.likelihood import nll_bits_per_code

    stage2 = tmp_path / "t" / "stage2"
    codes = torch.from_numpy(np.load(stage2 / "test_codes.npy")).long()
    labels = torch.from_numpy(np.load(stage2 / "test_labels.npy")).long()
    fp32 = nll_bits_per_code(vqprior.load(tmp_path / "t").prior, codes, labels)
    assert abs(s3[-1]["test_bits_per_code"] - fp32) < 0.02
    codebook = load_file(str(tmp_path / "t" / "stage1" / "vqvae.safetensors"))["quantizer.codebook"]
    assert codebook.dtype == torch.float32 and torch.isfinite(codebook).all()


def test_a_failed_compile_falls_back_to_eager_with_one_notice(monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no C compiler\nmore detail")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    said = []

    class Log(Reporter):
        def log(self, message):
            said.append(message)

    fn = maybe_compile(lambda x: x * 2, True, Log(), "test step")
    assert fn(3) == 6 and fn(4) == 8
    assert len(said) == 1 and "running it uncompiled" in said[0] and "no C compiler" in said[0]
    assert maybe_compile(len, False, Log(), "x") is len


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_each_torchrun_process_takes_the_gpu_of_its_local_rank(two_gpus):
    assert devices.resolve_device("auto", local_rank=1, local_world=2) == torch.device("cuda", 1)
    assert devices.resolve_device("cuda", local_rank=0, local_world=2) == torch.device("cuda", 0)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)  # one process: the GPU it names
    assert devices.resolve_device("auto") == torch.device("cuda", 0)
    assert devices.resolve_device("cpu", local_rank=3, local_world=4) == torch.device(
        "cpu"
    )  # gloo on the CPU: any count


@pytest.mark.parametrize(
    "name,local_rank,local_world,message",
    [
        ("auto", 0, 3, "torchrun started 3 processes on this machine but it has 2 GPU(s)"),
        ("cuda", 2, 3, "use --nproc-per-node=2"),
        ("cuda:1", 0, 2, "would put every torchrun process on one GPU"),
        ("cuda:2", None, 1, "this machine has 2 CUDA device(s)"),
    ],
)
def test_more_processes_than_gpus_is_refused_before_any_work(two_gpus, name, local_rank, local_world, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        devices.resolve_device(name, local_rank, local_world)


def test_set_device_comes_before_joining_the_process_group(two_gpus, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(
        torch.distributed, "init_process_group", lambda backend, **kw: calls.append(("init_process_group", backend))
    )
    for key, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    threads = torch.get_num_threads()
    try:
        rt = runtime.Runtime.setup(RunSection(device="auto"))
    finally:
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
    assert calls == [("set_device", "cuda:1"), ("init_process_group", "nccl")]
    assert (rt.device, rt.rank, rt.world_size, rt.local_rank) == (torch.device("cuda", 1), 3, 4, 1)
    assert rt.precision == "bf16" and rt.compile  # the CUDA defaults


def test_cpu_defaults_follow_the_cpus_bf16_units_and_stay_eager(monkeypatch):
    for has_units, expected in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(devices, "cpu_has_bf16_matmul", lambda has_units=has_units: has_units)
        rt = runtime.Runtime.setup(RunSection(device="cpu"))
        assert (rt.precision, rt.compile) == (expected, False)
    monkeypatch.undo()
    assert runtime.Runtime.setup(RunSection(device="cpu", precision="fp32")).precision == "fp32"


def test_bf16_units_are_read_from_the_cpu_flags_when_torch_has_no_probe(monkeypatch, tmp_path):
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    real = devices.Path

    def fake(flags):
        (tmp_path / "cpuinfo").write_text(f"processor : 0\nflags : fpu sse2 {flags}\n")
        return lambda p: real(tmp_path / "cpuinfo") if str(p) == "/proc/cpuinfo" else real(p)

    monkeypatch.setattr(devices, "Path", fake("avx2 avx512f amx_tile amx_bf16"))
    assert devices.cpu_has_bf16_matmul()
    monkeypatch.setattr(devices, "Path", fake("avx2 fma"))
    assert not devices.cpu_has_bf16_matmul()


# ------------------------------------------------------------------ the cuda group: runs only on a machine with a GPU

CUDA = ["--set", 'run.device="cuda"']


def cuda_args(out, name="t"):
    args = tiny_args(out, name)
    i = args.index('run.device="cpu"')
    return args[: i - 1] + args[i + 1 :] + CUDA


@pytest.mark.cuda
def test_cuda_tiny_pipeline_and_eval(tmp_path):
    result = runner.invoke(app, ["run", *cuda_args(tmp_path), "--per-class", "2"], catch_exceptions=False)
    assert result.exit_code == 0 and "device cuda" in result.output, result.output
    result = runner.invoke(
        app,
        ["eval", "--name", "t", "--out-dir", str(tmp_path), "--n", "200", "--device", "cuda"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output


@pytest.mark.cuda
def test_cuda_resume_is_bitwise_under_deterministic_mode(tmp_path):
    from test_resume import SignalAfter, config

    from vqprior.stages import s1_vqvae, s2_codes, s3_prior
    from vqprior.training import Interrupted

    extra = {"run.device": '"cuda"', "run.deterministic": "true", "run.compile": "false"}
    ref = config(tmp_path / "ref", "r", **extra)
    s1_vqvae.run(ref), s2_codes.run(ref), s3_prior.run(ref)
    cut = config(tmp_path / "cut", "r", **extra)
    with pytest.raises(Interrupted):
        s1_vqvae.run(cut, SignalAfter(7))
    s1_vqvae.run(cut)
    s2_codes.run(cut)
    with pytest.raises(Interrupted):
        s3_prior.run(cut, SignalAfter(9))
    s3_prior.run(cut)
    for stage, name in (("stage1", "vqvae.safetensors"), ("stage3", "prior.safetensors")):
        a, b = (
            load_file(str(tmp_path / "ref" / "r" / stage / name)),
            load_file(str(tmp_path / "cut" / "r" / stage / name)),
        )
        assert all(torch.equal(a[k], b[k]) for k in a), f"{stage} differs after resume"


@pytest.mark.cuda
def test_cuda_resume_without_deterministic_mode_stays_close(tmp_path):
    from test_resume import SignalAfter, config

    from vqprior.stages import s1_vqvae
    from vqprior.training import Interrupted

    ref = config(tmp_path / "ref", "r", **{"run.device": '"cuda"'})
    s1_vqvae.run(ref)
    cut = config(tmp_path / "cut", "r", **{"run.device": '"cuda"'})
    with pytest.raises(Interrupted):
        s1_vqvae.run(cut, SignalAfter(7))
    s1_vqvae.run(cut)
    a, b = (
        load_file(str(tmp_path / "ref" / "r" / "stage1" / "vqvae.safetensors")),
        load_file(str(tmp_path / "cut" / "r" / "stage1" / "vqvae.safetensors")),
    )
    for k in a:  # non-deterministic kernels: the same up to float noise that a few code flips can amplify
        if a[k].is_floating_point():
            assert (a[k] - b[k]).norm() <= 0.05 * a[k].norm() + 1e-3, k


@pytest.mark.cuda
@pytest.mark.parametrize("num_classes,guidance", [(0, 1.0), (10, 1.0), (10, 1.5)])
def test_cuda_cached_sampler_equals_naive(num_classes, guidance):
    from test_sampling import random_prior

    from vqprior.models.priors.base import sample

    model = random_prior(num_classes).cuda()
    labels = torch.arange(20) % 10 if num_classes else None
    a = sample(model, 20, (7, 7), labels, seed=3, method="naive", guidance=guidance)
    b = sample(model, 20, (7, 7), labels, seed=3, method="cached", guidance=guidance)
    assert a.is_cuda and torch.equal(a, b)


@pytest.mark.cuda
def test_cuda_training_steps_never_sync(tmp_path):
    from vqprior.optimizer import scaled_lr

    device = torch.device("cuda")
    model = small_vqvae().to(device)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=scaled_lr(2e-3, 64))
    vqvae_step(model, model, images)["loss"].backward()  # the one-time codebook seeding reads a flag once
    prior = components.instantiate(
        components.resolve(prior_network("gated_pixelcnn"), codebook_size=16, num_classes=10)
    ).to(device)
    ema, popt = WeightEMA(prior, 0.99), torch.optim.Adam(prior.parameters())
    codes, labels = torch.randint(0, 16, (64, 7, 7), device=device), torch.randint(0, 10, (64,), device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = vqvae_step(model, model, images)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = prior_step(prior, prior, codes, labels, torch.rand(64, 1, device=device) >= 0.1)["loss"]
            popt.zero_grad(set_to_none=True)
            loss.backward()
            popt.step()
            ema.update(prior)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
def test_cuda_torchrun_nccl_with_one_process_per_gpu(tmp_path):
    nproc = min(2, torch.cuda.device_count())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for stage in (1, 2, 3, 4):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "vqprior",
            "run-stage",
            str(stage),
            *cuda_args(tmp_path),
            "--set",
            "vqvae.batch_size=64",
            "--set",
            "prior.batch_size=64",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "t" / "stage4" / "samples.npz").is_file()
