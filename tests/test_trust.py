"""A shared run folder must never run code: components outside the registry need the user's explicit opt-in."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from conftest import tiny_args
from typer.testing import CliRunner

import vqprior
from vqprior import components
from vqprior.cli import app
from vqprior.config import Component
from vqprior.errors import UserError

runner = CliRunner()


@pytest.fixture(scope="module")
def finished(finished_tiny_run):
    return finished_tiny_run


def forge(run_dir, stage: int, key: str, target: str) -> None:
    """What an attacker does: point a saved component at other code and fix up the manifest's checksum."""
    folder = run_dir / f"stage{stage}"
    saved = json.loads((folder / "config.json").read_text())
    section = saved[key]["encoder"] if key == "vqvae" else saved[key]
    section["target"], section["params"] = target, {"command": f"touch {run_dir / 'PWNED'}"}
    (folder / "config.json").write_text(json.dumps(saved))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["outputs"]["config.json"] = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("stage,key", [(3, "prior"), (1, "vqvae")])
@pytest.mark.parametrize(
    "command",
    [
        ["classify", "--from", "test", "--n", "5"],
        ["score", "--from", "test", "--n", "5"],
        ["complete", "--from", "test", "--n", "1"],
        ["eval", "--n", "100"],
        ["run-stage", "4"],
    ],
)
def test_a_forged_run_folder_runs_no_code(finished, tmp_path, stage, key, command):
    run_dir = tmp_path / "t"
    shutil.copytree(finished, run_dir)
    forge(run_dir, stage, key, "os:system")
    where = (
        tiny_args(tmp_path)
        if command[0] == "run-stage"
        else ["--name", "t", "--out-dir", str(tmp_path), "--device", "cpu"]
    )
    result = runner.invoke(app, [*command, *where], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "is not a vqprior built-in" in result.output and "--trust-code" in result.output
    assert not (run_dir / "PWNED").exists()


def test_with_trust_code_a_non_module_target_is_still_refused_before_it_is_called(finished, tmp_path):
    run_dir = tmp_path / "t"
    shutil.copytree(finished, run_dir)
    forge(run_dir, 3, "prior", "os:system")
    result = runner.invoke(
        app,
        [
            "classify",
            "--from",
            "test",
            "--n",
            "5",
            "--name",
            "t",
            "--out-dir",
            str(tmp_path),
            "--device",
            "cpu",
            "--trust-code",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 2 and "not a torch.nn.Module class" in result.output, result.output
    assert not (run_dir / "PWNED").exists()


def test_python_api_refuses_then_accepts_with_trust_code(finished, tmp_path):
    run_dir = tmp_path / "t"
    shutil.copytree(finished, run_dir)
    forge(run_dir, 3, "prior", "subprocess:Popen")
    with pytest.raises(UserError, match="not a vqprior built-in"):
        vqprior.load(run_dir, device="cpu")
    with pytest.raises(UserError, match="not a torch.nn.Module class"):  # Popen is a class, but no Module
        vqprior.load(run_dir, device="cpu", trust_code=True)
    assert not (run_dir / "PWNED").exists()


def test_builtins_load_by_name_and_by_their_old_import_path():
    for target in ("gated_pixelcnn", "vqprior.models.priors.gated_pixelcnn:GatedPixelCNN"):
        module = components.instantiate({"target": target, "params": {"codebook_size": 4, "channels": 4, "layers": 1}})
        assert type(module).__name__ == "GatedPixelCNN"


def test_own_code_needs_the_opt_in_and_the_opt_in_ends_with_the_block():
    spec = {"target": "torch.nn:Linear", "params": {"in_features": 2, "out_features": 3}}
    with pytest.raises(UserError, match="not a vqprior built-in"):
        components.instantiate(spec)
    with components.trusting_code():
        assert isinstance(components.instantiate(spec), torch.nn.Linear)
    with pytest.raises(UserError, match="not a vqprior built-in"):
        components.instantiate(spec)


def test_the_default_config_names_only_registry_entries():
    from vqprior.config import Config
    from vqprior.registry import BUILTINS

    cfg = Config()
    assert {cfg.vqvae.encoder.target, cfg.vqvae.decoder.target, cfg.prior.network.target} <= set(BUILTINS)
    assert Component(target="conv_encoder").target == "conv_encoder"
