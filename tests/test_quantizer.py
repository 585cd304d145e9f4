from pathlib import Path

import torch

from vqprior.models.quantizer import VectorQuantizer, code_usage


def brute_force_nearest(flat, codebook):
    return torch.stack([((codebook - v) ** 2).sum(1).argmin() for v in flat])


def test_indices_equal_brute_force_nearest_code():
    torch.manual_seed(0)
    vq = VectorQuantizer(37, 5).double().eval()
    z = torch.randn(4, 5, 6, 3, dtype=torch.float64)
    _, idx, _ = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 5)
    assert torch.equal(idx.flatten(), brute_force_nearest(flat, vq.codebook))


def test_quantized_output_is_the_chosen_code():
    torch.manual_seed(1)
    vq = VectorQuantizer(8, 3).eval()
    z = torch.randn(2, 3, 4, 4)
    q, idx, _ = vq(z)
    assert torch.allclose(q, vq.codebook[idx].permute(0, 3, 1, 2), atol=1e-6)


def test_straight_through_passes_decoder_gradient_unchanged():
    torch.manual_seed(2)
    vq = VectorQuantizer(16, 4, commitment=0.0).eval()
    z = torch.randn(3, 4, 5, 5, requires_grad=True)
    q, _, commitment = vq(z)
    upstream = torch.randn_like(q)
    (q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)


def test_commitment_loss_pulls_encoder_output_towards_its_code():
    torch.manual_seed(3)
    vq = VectorQuantizer(16, 4, commitment=0.25).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    q, _, commitment = vq(z)
    commitment.backward()
    expected = 0.25 * 2 * (z - q).detach() / z.numel()
    assert torch.allclose(z.grad, expected, atol=1e-7)


def test_ema_update_moves_codes_towards_assigned_vectors():
    torch.manual_seed(4)
    vq = VectorQuantizer(4, 2, decay=0.5, dead_code_threshold=0.0)
    vq.set_codebook(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]]))
    target = torch.tensor([1.0, 1.0])
    z = (target + 0.01 * torch.randn(64, 2)).T.reshape(1, 2, 8, 8)  # every vector lands on code 0
    before = (vq.codebook[0] - target).norm()
    for _ in range(5):
        vq(z)
    after = (vq.codebook[0] - target).norm()
    assert after < 0.1 * before
    # codes nobody chose stay where they were (their EMA mean is unchanged)
    assert torch.allclose(vq.codebook[1], torch.tensor([10.0, 10.0]), atol=0.01)


def test_dead_codes_are_reseeded_from_encoder_outputs():
    torch.manual_seed(5)
    vq = VectorQuantizer(8, 2, decay=0.9, dead_code_threshold=0.95)
    codebook = torch.full((8, 2), 100.0)
    codebook[0] = 0.0
    vq.set_codebook(codebook)
    z = torch.randn(1, 2, 10, 10)
    vq(z)  # only code 0 is used; the other seven decay from 1.0 to 0.9, below the threshold
    outputs = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for code in vq.codebook[1:]:
        assert ((outputs - code).abs().sum(1) < 1e-6).any(), "re-seeded code is not an encoder output"
    assert vq.codebook[0].abs().max() < 1.0, "the used code must not be re-seeded"


def test_eval_mode_does_not_touch_the_codebook():
    vq = VectorQuantizer(8, 2).eval()
    before = vq.codebook.clone()
    vq(torch.randn(1, 2, 4, 4))
    assert torch.equal(vq.codebook, before)


def test_code_usage():
    stats = code_usage(torch.tensor([5, 5, 0, 0]))
    assert stats["usage"] == 0.5
    assert abs(stats["perplexity"] - 2.0) < 1e-9


def test_a_new_quantizer_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    """A quantizer is a {target, params} component like a prior: one registry line makes it a built-in (no
    --trust-code), the pipeline passes it K and D, and the run folder saves it by name."""
    import json

    import numpy as np
    from conftest import tiny_args
    from typer.testing import CliRunner

    from vqprior import registry
    from vqprior.cli import app

    monkeypatch.setitem(registry.BUILTINS, "fixed", registry.Builtin("toy_quantizer:FixedCodebook", "quantizer"))
    runner = CliRunner()
    args = [*tiny_args(tmp_path), "--set", 'vqvae.quantizer="fixed"', "--set", "vqvae.codebook_size=12"]
    for stage in (1, 2, 3, 4):
        result = runner.invoke(app, ["run-stage", str(stage), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "t" / "stage1" / "config.json").read_text())["vqvae"]["quantizer"]
    assert saved == {"target": "fixed", "params": {"codebook_size": 12, "code_dim": 8}}
    assert json.loads((tmp_path / "t" / "stage2" / "manifest.json").read_text())["codebook_size"] == 12
    assert np.load(tmp_path / "t" / "stage2" / "train_codes.npy").max() < 12
    assert np.load(tmp_path / "t" / "stage4" / "samples.npz")["images"].shape[1:] == (1, 28, 28)

    # the same class named by file: code, so only with --trust-code; a class that is not a Quantizer is one line
    own = str(Path(__file__).parent / "toy_quantizer.py")
    for target, trust, expected in (
        ("FixedCodebook", [], "--trust-code"),
        ("NotAQuantizer", ["--trust-code"], "is not a vqprior.models.quantizer.Quantizer"),
    ):
        result = runner.invoke(
            app,
            [
                "run-stage",
                "1",
                *tiny_args(tmp_path, "own"),
                *trust,
                "--set",
                f'vqvae.quantizer={{target="{own}:{target}"}}',
            ],
        )
        assert result.exit_code != 0 and expected in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "own" / "stage1").exists()


def test_quantizers_saved_before_they_were_components_still_load():
    from vqprior.models.fsq import FSQ
    from vqprior.models.vqvae import build_quantizer

    ema = build_quantizer(
        {"codebook_size": 16, "code_dim": 8, "decay": 0.9, "commitment": 0.5, "dead_code_threshold": 1}
    )
    assert isinstance(ema, VectorQuantizer) and (ema.codebook_size, ema.decay, ema.commitment) == (16, 0.9, 0.5)
    fsq = build_quantizer({"kind": "fsq", "levels": [4, 4], "code_dim": 8})
    assert isinstance(fsq, FSQ) and fsq.codebook_size == 16
    now = build_quantizer({"target": "fsq", "params": {"levels": [4, 4], "code_dim": 8}})
    assert now.state_dict().keys() == fsq.state_dict().keys()
