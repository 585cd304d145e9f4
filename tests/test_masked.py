"""The masked kind (MaskGIT-style): what its network conditions on, its exact raster likelihood, S-step parallel
decoding (kept codes fixed, deterministic, batch-size independent, one pass per step) and the pipeline with it."""

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import tiny_args

from vqprior.errors import UserError
from vqprior.models.priors.base import generate, sample
from vqprior.models.priors.contract import check_prior
from vqprior.models.priors.fill import fill
from vqprior.models.priors.masked import MaskedPrior


def random_masked(grid=(2, 3), k=3, num_classes=2, steps=4, seed=0):
    torch.manual_seed(seed)
    model = MaskedPrior(k, grid=grid, width=16, depth=2, heads=2, decode_steps=steps, num_classes=num_classes).double()
    with torch.no_grad():  # larger weights than the default init, so every path matters
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def test_the_network_sees_every_visible_code_and_nothing_under_the_mask():
    model = random_masked(grid=(3, 3), k=5)
    codes = torch.randint(0, 5, (1, 3, 3))
    tokens = codes.clone()
    tokens[0, 1, 1] = model.mask_token  # the centre is hidden
    seen = {}

    def keep(module, inputs, out):
        out.retain_grad()
        seen["e"] = out

    handle = model.embed.register_forward_hook(keep)
    try:
        model(tokens, torch.tensor([1]))[0, :, 1, 1].sum().backward()
    finally:
        handle.remove()
    grad = seen["e"].grad[0].abs().sum(-1).view(3, 3)
    assert bool((grad > 0).all())  # before *and* after it in raster order: bidirectional
    # what was under the mask does not matter: the input holds only the mask token there
    other = codes.clone()
    other[0, 1, 1] = (codes[0, 1, 1] + 1) % 5
    a = model(torch.where(tokens == model.mask_token, tokens, codes), torch.tensor([1]))
    b = model(torch.where(tokens == model.mask_token, tokens, other), torch.tensor([1]))
    assert torch.equal(a, b)


def test_the_raster_likelihood_is_causal_normalised_and_works_on_the_first_rows():
    model = random_masked()
    check_prior(model, "masked", (2, 3))  # causality as for every kind
    maps = torch.tensor(list(itertools.product(range(3), repeat=6))).view(-1, 2, 3)
    for c in (0, 1):
        total = model.log_prob(maps, torch.full((len(maps),), c)).exp().sum()
        assert abs(float(total.detach()) - 1) < 1e-9
    codes = torch.randint(0, 3, (4, 2, 3))
    cond = model.condition(torch.zeros(4, dtype=torch.long), 4)
    assert torch.allclose(model.logits(codes, cond)[:, :, :1], model.logits(codes[:, :1], cond))
    # factor p is the network's prediction at p with p and everything after it hidden
    tokens = codes.clone().view(4, -1)
    tokens[:, 2:] = model.mask_token
    direct = model.masked_logits(tokens.view(4, 2, 3), cond).flatten(2)[:, :, 2]
    assert torch.allclose(model.logits(codes, cond).flatten(2)[:, :, 2], direct)


@pytest.mark.parametrize("guidance", [1.0, 1.5, (1.0, 2.5)])
def test_parallel_decoding_is_deterministic_and_independent_of_the_batch_size(guidance):
    model = random_masked()
    labels = torch.arange(200) % 2
    a = generate(model, 200, (2, 3), labels, seed=3, batch_size=50, guidance=guidance, decode_steps=3)
    b = generate(model, 200, (2, 3), labels, seed=3, batch_size=200, guidance=guidance, decode_steps=3)
    c = generate(model, 200, (2, 3), labels, seed=4, batch_size=200, guidance=guidance, decode_steps=3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 3
    if isinstance(guidance, tuple):  # a ramp reaches the parallel decoder's whole-map logits
        flat = generate(model, 200, (2, 3), labels, seed=3, batch_size=200, guidance=guidance[0], decode_steps=3)
        assert not torch.equal(a, flat)


@pytest.mark.parametrize("steps", [1, 2, 6, 9])
def test_s_steps_are_s_network_passes_and_every_code_gets_drawn(steps):
    model = random_masked(grid=(2, 3))
    calls = []
    handle = model.head.register_forward_hook(lambda m, i, out: calls.append(1))
    try:
        out = sample(model, 50, (2, 3), torch.zeros(50, dtype=torch.long), seed=0, decode_steps=steps)
    finally:
        handle.remove()
    # after step s, floor(6 cos(pi/2 s/S)) of the 6 codes stay hidden; a step that fixes none costs no pass
    hidden = [6] + [int(6 * math.cos(0.5 * math.pi * s / steps)) for s in range(1, steps)] + [0]
    assert len(calls) == sum(a > b for a, b in zip(hidden, hidden[1:]))
    assert int(out.max()) < 3  # no mask token left


def test_low_temperature_decoding_in_one_step_is_the_networks_argmax():
    model = random_masked()
    cond = model.condition(torch.ones(50, dtype=torch.long), 50)
    out = sample(model, 50, (2, 3), torch.ones(50, dtype=torch.long), temperature=1e-4, seed=0, decode_steps=1)
    tokens = torch.full((50, 2, 3), model.mask_token)
    assert torch.equal(out, model.masked_logits(tokens, cond).argmax(1))


def test_completion_keeps_the_kept_codes_and_depends_on_them():
    model = random_masked(grid=(3, 3), k=4, steps=3)
    torch.manual_seed(1)
    codes = torch.randint(0, 4, (6, 3, 3))
    keep = torch.rand(6, 3, 3) < 0.5
    keep[:, 0, 0] = True
    out, labels, posterior = fill(model, codes, keep, torch.zeros(6, dtype=torch.long), seed=0)
    assert torch.equal(out[keep], codes[keep]) and posterior is None
    again, _, _ = fill(model, codes, keep, torch.zeros(6, dtype=torch.long), seed=0)
    assert torch.equal(out, again)
    # without a class: decoded under the null condition, p(c | completed map) reported
    out, labels, posterior = fill(model, codes, keep, None, torch.log(torch.tensor([0.5, 0.5])), seed=0)
    assert torch.equal(out[keep], codes[keep])
    assert posterior.shape == (6, 2) and torch.allclose(posterior.sum(1), torch.ones(6)) and labels.shape == (6,)


def test_steps_is_refused_for_a_raster_kind():
    from vqprior.models.priors.gated_pixelcnn import GatedPixelCNN

    with pytest.raises(ValueError, match="decodes in parallel"):
        sample(GatedPixelCNN(8, channels=8, layers=2), 2, (3, 3), decode_steps=4)
    with pytest.raises(ValueError, match="decode_steps must be"):
        sample(random_masked(), 2, (2, 3), torch.zeros(2, dtype=torch.long), decode_steps=0)


def test_the_masked_kind_runs_through_the_pipeline_and_the_api(tmp_path):
    from typer.testing import CliRunner

    import vqprior
    from vqprior.cli import app

    tiny = tiny_args(tmp_path)
    at = tiny.index("prior.network.params={channels=8, layers=2, kernel=3}")
    args = [*tiny[: at - 1], *tiny[at + 1 :], "--set", 'prior.kind="masked"']
    args += ["--set", "prior.network.params={width=16, depth=1, heads=2, decode_steps=4}"]
    result = CliRunner().invoke(app, ["run", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "4 parallel steps" in said and "raster likelihood" in said
    run = vqprior.load(tmp_path / "t", device="cpu")
    assert run.prior.parallel and run.prior.grid == tuple(run.grid)
    out = run.generate(labels=[1, 2], decode_steps=2)
    assert out.images.shape == (2, 1, 28, 28)
    with pytest.raises(UserError, match="decode_steps must be"):
        run.generate(labels=[1], decode_steps=-1)
    images = run.test_images(3)
    done = run.complete(images, keep="bottom", samples=2)
    codes = run.encode(images)
    assert torch.equal(done.codes[:, :, 4:], codes[:, None, 4:].expand(-1, 2, -1, -1))
    assert done.method == "parallel" and not done.exact and done.posterior.shape == (3, 10)
    scored = run.score(images)  # the exact raster likelihood
    assert np.isfinite(scored["image_bits_bound"].numpy()).all()


def test_scoring_and_classification_use_the_raster_likelihood_not_the_network():
    from vqprior.models.priors.classes import class_log_likelihoods, class_posterior

    prior = random_masked(grid=(2, 3), k=3, num_classes=2)
    codes = torch.randint(0, 3, (5, 2, 3), generator=torch.Generator().manual_seed(1))
    got = class_log_likelihoods(prior, codes)
    for c in range(2):
        exact = prior.log_prob(codes, torch.full((5,), c)).double()
        assert torch.allclose(got[:, c], exact, atol=1e-5)
    # the first p codes' likelihood is the sum of their raster factors alone
    part = class_log_likelihoods(prior, codes, positions=2)
    logits = prior.logits(codes, prior.condition(torch.zeros(5, dtype=torch.long), 5))
    factors = -torch.nn.functional.cross_entropy(logits, codes, reduction="none").flatten(1)
    assert torch.allclose(part[:, 0], factors[:, :2].sum(1).double(), atol=1e-5)
    post = class_posterior(prior, codes, torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64)))
    assert torch.allclose(post.sum(1), torch.ones(5, dtype=torch.float64))
