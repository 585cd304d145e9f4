"""Finite scalar quantization: the grid, the code numbers, the gradient, and a VQ-VAE trained with it."""

from __future__ import annotations

import itertools

import pytest
import torch

from vqprior.config_files import load_config
from vqprior.errors import UserError
from vqprior.models.fsq import FSQ


@pytest.mark.parametrize("levels", [[8, 4, 4], [8, 5, 5, 5], [2, 3], [7]])
def test_every_code_number_round_trips_through_its_grid_values(levels):
    q = FSQ(levels, code_dim=4)
    k = q.codebook_size
    assert k == torch.tensor(levels).prod().item()
    codes = torch.arange(k)
    values = q.indices_to_values(codes)
    assert values.shape == (k, len(levels)) and values.min() >= -1 and values.max() <= 1
    assert torch.equal(q.values_to_indices(values), codes)
    # the grid is every combination of per-dimension values, each number once
    per_dim = [sorted(set(values[:, i].tolist())) for i in range(len(levels))]
    assert [len(v) for v in per_dim] == levels
    assert len({tuple(r) for r in values.tolist()}) == k == len(list(itertools.product(*per_dim)))


def test_bounding_gives_exactly_the_levels_and_rounding_passes_the_gradient_straight_through():
    q = FSQ([8, 5, 4], code_dim=3)
    z = torch.linspace(-6, 6, 4001)[:, None].expand(-1, 3).clone().requires_grad_(True)
    values = q.grid_values(z)
    digits = [sorted(set(values[:, i].tolist())) for i in range(3)]
    assert [len(d) for d in digits] == [8, 5, 4]  # every level is reached, none beyond
    (values * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    # straight-through: d(rounded)/dz is d(bounded)/dz, positive everywhere and largest near the middle
    grad = z.grad
    assert (grad > 0).all() and grad[2000].gt(grad[0]).all()


def test_nearest_and_forward_agree_and_lookup_decodes_the_grid_point():
    torch.manual_seed(0)
    q = FSQ([8, 4, 4], code_dim=6)
    z = torch.randn(2, 6, 3, 3) * 2
    quantized, indices, loss = q(z)
    assert loss.item() == 0 and indices.shape == (2, 3, 3) and indices.max() < 128
    assert torch.equal(q.nearest(z.permute(0, 2, 3, 1).reshape(-1, 6)).view(2, 3, 3), indices)
    torch.testing.assert_close(q.lookup(indices), quantized, rtol=0, atol=1e-6)
    # the encoder gets a gradient through the quantizer
    z.requires_grad_(True)
    q(z)[0].sum().backward()
    assert z.grad.abs().sum() > 0


def test_config_derives_k_from_the_levels_and_refuses_a_contradiction():
    cfg = load_config(overrides=['vqvae.quantizer="fsq"', "vqvae.fsq_levels=[8, 5, 5, 5]"])
    assert cfg.vqvae.codebook_size == 1000
    with pytest.raises(UserError, match="product of the levels"):
        load_config(overrides=['vqvae.quantizer="fsq"', "vqvae.codebook_size=64"])
    # an explicit codebook_size equal to the default is still the user's: [8, 8] make 64, not 128
    with pytest.raises(UserError, match="codebook_size=128 but fsq_levels \\[8, 8\\] make 64"):
        load_config(overrides=['vqvae.quantizer="fsq"', "vqvae.fsq_levels=[8, 8]", "vqvae.codebook_size=128"])
    agreed = ['vqvae.quantizer="fsq"', "vqvae.fsq_levels=[8, 8]", "vqvae.codebook_size=64"]
    assert load_config(overrides=agreed).vqvae.codebook_size == 64
    assert load_config(overrides=['vqvae.quantizer="fsq"', "vqvae.fsq_levels=[8, 8]"]).vqvae.codebook_size == 64
    assert load_config().vqvae.codebook_size == 128  # the EMA codebook's default is untouched
    with pytest.raises(UserError, match="unknown quantizer"):
        load_config(overrides=['vqvae.quantizer="lfq"'])
    with pytest.raises(UserError):
        load_config(overrides=['vqvae.quantizer="fsq"', "vqvae.fsq_levels=[1, 4]"])


def test_an_ema_run_keeps_its_fingerprint_and_an_fsq_run_gets_its_own():
    from vqprior.stages import s1_vqvae

    base = s1_vqvae.fingerprint(load_config(overrides=[]))
    assert "quantizer" not in base["vqvae"] and "fsq_levels" not in base["vqvae"]
    fsq = s1_vqvae.fingerprint(load_config(overrides=['vqvae.quantizer="fsq"']))
    assert fsq["vqvae"]["quantizer"] == "fsq" and fsq != base


def test_fsq_runs_through_the_pipeline_and_resumes_bitwise(tmp_path):
    import shutil

    import numpy as np
    from conftest import tiny_args
    from safetensors.torch import load_file
    from test_resume import SignalAfter

    import vqprior
    from vqprior.stages import s1_vqvae, s2_codes, s3_prior, s4_sample
    from vqprior.training import Interrupted

    def cfg_for(out):
        args = tiny_args(out)
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        return load_config(overrides=[*sets, 'run.name="t"', 'vqvae.quantizer="fsq"', "vqvae.fsq_levels=[4, 4]"])

    cfg = cfg_for(tmp_path / "ref")
    assert cfg.vqvae.codebook_size == 16
    for stage in (s1_vqvae, s2_codes, s3_prior, s4_sample):
        stage.run(cfg)
    run_dir = tmp_path / "ref" / "t"
    codes = np.load(run_dir / "stage2" / "train_codes.npy")
    assert codes.min() >= 0 and codes.max() < 16 and len(np.unique(codes)) > 4
    run = vqprior.load(run_dir, device="cpu")
    assert type(run.vqvae.quantizer).__name__ == "FSQ"
    assert run.generate(labels=[3], seed=0).images.shape == (1, 1, 28, 28)

    resumed = cfg_for(tmp_path / "resumed")
    with pytest.raises(Interrupted):
        s1_vqvae.run(resumed, SignalAfter(2))
    s1_vqvae.run(resumed)
    a = load_file(str(run_dir / "stage1" / "vqvae.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "t" / "stage1" / "vqvae.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "quantizer.project_in.weight" in a and not any("codebook" in k for k in a)
    shutil.rmtree(tmp_path / "resumed")
