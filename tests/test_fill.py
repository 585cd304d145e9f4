"""Completing any region with a raster prior: the MCMC fill against brute-force enumeration, its guarantees,
and bad masks on the API, the CLI and the page."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from vqprior.errors import UserError
from vqprior.masks import code_mask, erase_box, region
from vqprior.models.priors.fill import fill, is_prefix
from vqprior.models.priors.gated_pixelcnn import GatedPixelCNN

K, GRID = 3, (2, 3)


def random_prior(num_classes=0, seed=0):
    torch.manual_seed(seed)
    prior = GatedPixelCNN(K, channels=8, layers=3, num_classes=num_classes).eval()
    with torch.no_grad():  # sharper than at init, so the conditional is far from uniform
        for p in prior.parameters():
            p.mul_(3)
    return prior


def all_maps():
    return torch.tensor(list(itertools.product(range(K), repeat=GRID[0] * GRID[1]))).view(-1, *GRID)


def exact_log_joint(prior, maps, label=None):
    labels = None if label is None else torch.full((len(maps),), label)
    with torch.no_grad():
        return prior.log_prob(maps, labels).double()


def test_the_fill_samples_the_exact_conditional_of_an_arbitrary_region():
    prior = random_prior()
    keep = torch.tensor([[False, True, False], [True, False, True]])  # not a prefix: later codes are kept
    given = torch.tensor([[0, 2, 0], [1, 0, 0]])
    maps = all_maps()
    consistent = (maps[:, keep] == given[keep]).all(1)
    logp = exact_log_joint(prior, maps)[consistent]
    exact = torch.softmax(logp, 0)
    chains = 20000
    out, _, _ = fill(prior, given.expand(chains, *GRID), keep.expand(chains, *GRID), None, sweeps=3, seed=1)
    assert (out[:, keep] == given[keep]).all()  # kept codes never change
    index = {tuple(m.flatten().tolist()): i for i, m in enumerate(maps[consistent])}
    counts = torch.bincount(torch.tensor([index[tuple(m.flatten().tolist())] for m in out]), minlength=len(exact))
    empirical = counts.double() / chains
    assert 0.5 * (empirical - exact).abs().sum() < 0.03  # total variation; the sampling noise alone is ~0.02
    # without the sweeps a single ancestral draft ignores the later kept codes: measurably wrong; resampling 16
    # drafts by the kept codes' likelihood (the chain's start) is already much closer
    tv = {}
    for candidates in (1, 16):
        start, _, _ = fill(
            prior,
            given.expand(chains, *GRID),
            keep.expand(chains, *GRID),
            None,
            sweeps=0,
            seed=1,
            candidates=candidates,
        )
        counts0 = torch.bincount(
            torch.tensor([index[tuple(m.flatten().tolist())] for m in start]), minlength=len(exact)
        )
        tv[candidates] = 0.5 * (counts0.double() / chains - exact).abs().sum()
    assert tv[1] > 0.06 and tv[16] < tv[1] / 2  # the noise of 20,000 chains alone is ~0.02


@pytest.mark.parametrize(
    "chains,options",
    [(4000, {"sweeps": 4}), (2000, {"sweeps": 0, "candidates": 32})],
    ids=["chain", "drafts-per-class-alone"],
)
def test_the_class_posterior_of_a_region_matches_enumeration(chains, options):
    prior = random_prior(num_classes=3, seed=2)
    keep = torch.tensor([[False, False, True], [False, True, True]])
    given = torch.tensor([[0, 0, 1], [0, 2, 0]])
    maps = all_maps()
    consistent = maps[(maps[:, keep] == given[keep]).all(1)]
    log_prior = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    joint = torch.stack([torch.logsumexp(exact_log_joint(prior, consistent, c), 0) for c in range(3)])
    exact = torch.softmax(joint + log_prior.double(), 0)
    _, labels, posterior = fill(
        prior, given.expand(chains, *GRID), keep.expand(chains, *GRID), None, log_prior, seed=0, **options
    )
    assert posterior.shape == (chains, 3) and torch.allclose(posterior.sum(1), torch.ones(chains))
    assert (posterior.double().mean(0) - exact).abs().max() < 0.03
    assert (torch.bincount(labels, minlength=3).double() / chains - exact).abs().max() < 0.04


def test_a_draft_weight_is_the_kept_codes_likelihood_and_the_cached_draft_equals_the_naive_one():
    from vqprior.models.priors.base import GumbelNoise, Prior
    from vqprior.models.priors.fill import KeptCodes, drafts

    prior = random_prior(num_classes=2, seed=3)
    keep = torch.tensor([[False, True, False], [True, False, True]]).expand(6, *GRID)
    given = torch.randint(0, K, (6, *GRID), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    out, log_weight = drafts(prior, given, keep, labels, 1.0, 1.0, seed=4)
    assert torch.equal(out[keep], given[keep])
    with torch.no_grad():
        factors = -torch.nn.functional.cross_entropy(
            prior.logits(out, prior.condition(labels, 6)), out, reduction="none"
        )
    assert torch.allclose(log_weight, (factors * keep).flatten(1).sum(1).double(), atol=1e-5)
    # the same noise through the naive reference sampler gives the same drafts and weights
    naive = KeptCodes(GumbelNoise(4, 0, 6, out.device), given, keep)
    start = torch.where(keep, given, torch.zeros_like(given))
    same = Prior.draw(prior, start.clone(), prior.condition(labels, 6), 0, 1.0, naive)
    assert torch.equal(same, out) and torch.allclose(naive.log_weight, log_weight, atol=1e-5)


def test_the_fill_is_deterministic_per_seed_and_a_given_class_is_kept():
    prior = random_prior(num_classes=2)
    keep = torch.tensor([[False, True, True], [True, True, False]]).expand(5, *GRID)
    codes = torch.randint(0, K, (5, *GRID), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1, 0, 1])
    a = fill(prior, codes, keep, labels, seed=7)
    b = fill(prior, codes, keep, labels, seed=7)
    c = fill(prior, codes, keep, labels, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], labels) and a[2] is None
    assert not torch.equal(a[0], c[0]) and torch.equal(a[0][keep], codes[keep])


def test_masks_from_pixels_map_to_the_patches_they_touch():
    grid, size = (7, 7), (28, 28)
    keep = code_mask(erase_box("8,12,13,14", size), 2, grid, size)
    # pixels x 8..12, y 12..13 touch code columns 2 and 3 (x // 4) and code row 3 (y // 4)
    erased = torch.nonzero(~keep[0]).tolist()
    assert erased == [[3, 2], [3, 3]] and torch.equal(keep[0], keep[1])
    assert is_prefix(code_mask("top", 1, grid, size)) == 21 and is_prefix(code_mask("bottom", 1, grid, size)) is None
    assert int(region("left", grid).sum()) == 21 and bool(region("right", grid)[:, -1].all())
    assert torch.equal(
        code_mask(np.full(grid, 1, np.uint8) - np.eye(7, dtype=np.uint8), 1, grid, size)[0], ~torch.eye(7).bool()
    )


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.zeros((28, 28), bool), "keeps nothing"),
        (np.ones((28, 28), bool), "keeps every code position"),
        (np.ones((27, 28), bool), "must match the image"),
        (np.full((28, 28), 0.5), "must be binary"),
        (np.ones((2, 3, 28, 28), bool), "has shape"),
        ("middle", "choose one of top, bottom, left, right"),
    ],
)
def test_bad_masks_are_one_line_errors(mask, message):
    with pytest.raises(UserError, match=message) as e:
        code_mask(mask, 1, (7, 7), (28, 28))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("box", ["1,2,3", "5,5,5,9", "0,0,29,10", "a,b,c,d"])
def test_bad_erase_boxes_are_one_line_errors(box):
    with pytest.raises(UserError, match="--erase"):
        erase_box(box, (28, 28))


@pytest.mark.parametrize(
    "order,kept",
    [("reverse", (slice(1, 2), slice(None))), ("transpose", (slice(None), slice(0, 1))),
     ("reverse_transpose", (slice(None), slice(2, 3)))],
)  # fmt: skip
def test_a_part_that_is_a_prefix_in_a_learned_order_is_completed_exactly_by_that_orders_network(order, kept):
    """The bottom row, the left or the right column of a 2x3 map: the network of the order in which it is a prefix
    continues it, and the completions follow that network's exact conditional (enumerated over all maps of its
    turned-around joint); the class posterior is that network's exact p(c | kept)."""
    from vqprior.models.priors.fill import continue_prefix
    from vqprior.models.priors.orders import to_order

    torch.manual_seed(0)
    prior = GatedPixelCNN(K, channels=8, layers=3, num_classes=2, orders=["reverse", "transpose", "reverse_transpose"])
    with torch.no_grad():
        for p in prior.parameters():
            p.mul_(3)
    prior.eval()
    keep = torch.zeros(GRID, dtype=torch.bool)
    keep[kept] = True
    given = torch.tensor([[2, 0, 1], [1, 2, 0]])
    maps = all_maps()
    consistent = (maps[:, keep] == given[keep]).all(1)
    network = prior.order(order)
    log_prior = torch.log(torch.tensor([0.3, 0.7]))
    # exact: p(map, c) = p_order(turned map | c) p(c), over the maps that agree with the kept codes
    with torch.no_grad():
        joint = (
            torch.stack(
                [
                    network.log_prob(to_order(maps[consistent], order), torch.full((int(consistent.sum()),), c))
                    for c in (0, 1)
                ],
                1,
            ).double()
            + log_prior.double()
        )
    exact_maps = torch.softmax(torch.logsumexp(joint, 1), 0)
    exact_classes = torch.softmax(torch.logsumexp(joint, 0), 0)
    n = 20000
    out, posterior, labels, used = continue_prefix(prior, given[None], keep[None], n, None, log_prior, 1.0, 1.0, seed=2)
    assert used == order and posterior.shape == (1, 2) and labels.shape == (1, n)
    assert torch.allclose(posterior[0].double(), exact_classes, atol=1e-5)
    out = out[0]
    assert (out[:, keep] == given[keep]).all()  # kept codes stay where they were
    index = {tuple(m.flatten().tolist()): i for i, m in enumerate(maps[consistent])}
    counts = torch.bincount(torch.tensor([index[tuple(m.flatten().tolist())] for m in out]), minlength=len(index))
    assert 0.5 * (counts.double() / n - exact_maps).abs().sum() < 0.03  # total variation; noise alone ~0.02
    # without that order's network the same part is not a prefix: no exact path
    assert (
        continue_prefix(GatedPixelCNN(K, 8, 3, num_classes=2), given[None], keep[None], 1, None, log_prior, 1.0, 1.0, 0)
        is None
    )


def test_the_orders_train_as_separate_networks_and_a_prior_without_them_is_unchanged():
    from vqprior.models.priors.orders import from_order, to_order

    torch.manual_seed(0)
    plain = GatedPixelCNN(K, channels=8, layers=2, num_classes=2)
    torch.manual_seed(0)
    both = GatedPixelCNN(K, channels=8, layers=2, num_classes=2, orders=["reverse"])
    assert not any(k.startswith("orders.") for k in plain.state_dict())  # saved runs load as before
    assert all(torch.equal(v, both.state_dict()[k]) for k, v in plain.state_dict().items())  # same initialisation
    codes = torch.randint(0, K, (5, 4, 3))
    cond = torch.eye(2)[torch.tensor([0, 1, 0, 1, 0])]
    loss = both.training_loss(both, codes, cond)
    raster = torch.nn.functional.cross_entropy(both.logits(codes, cond), codes)
    turned = to_order(codes, "reverse")
    other = torch.nn.functional.cross_entropy(both.orders["reverse"].logits(turned, cond), turned)
    assert torch.allclose(loss, raster + other)
    loss.backward()  # each network's gradient is its own order's loss's
    assert all(p.grad is not None for p in both.parameters())
    for order in ("raster", "reverse", "transpose", "reverse_transpose"):
        maps = torch.arange(12).view(1, 3, 4)
        assert torch.equal(from_order(to_order(maps, order), order), maps)
    assert to_order(torch.arange(6).view(2, 3), "reverse").flatten().tolist() == [5, 4, 3, 2, 1, 0]
    assert to_order(torch.arange(6).view(2, 3), "transpose").flatten().tolist() == [0, 3, 1, 4, 2, 5]
    with pytest.raises(ValueError, match="orders must be"):
        GatedPixelCNN(K, orders=["sideways"])


def test_a_spent_time_budget_stops_the_sweeps_where_they_are():
    """The page bounds each request by a deadline: once it has passed, no further sweep runs (the drafts' pick
    stands); a deadline in the future changes nothing."""
    import time

    prior = random_prior(num_classes=2)
    keep = torch.tensor([[False, True, False], [True, False, True]]).expand(50, *GRID)
    given = torch.tensor([[0, 2, 0], [1, 0, 0]]).expand(50, *GRID)
    log_prior = torch.log(torch.tensor([0.5, 0.5]))
    drafts_only = fill(prior, given, keep, None, log_prior, sweeps=0, seed=4)
    spent = fill(prior, given, keep, None, log_prior, sweeps=6, seed=4, deadline=time.monotonic() - 1)
    later = fill(prior, given, keep, None, log_prior, sweeps=6, seed=4, deadline=time.monotonic() + 3600)
    unbounded = fill(prior, given, keep, None, log_prior, sweeps=6, seed=4)
    assert torch.equal(spent[0], drafts_only[0]) and torch.equal(spent[1], drafts_only[1])
    assert torch.equal(later[0], unbounded[0]) and not torch.equal(unbounded[0], drafts_only[0])
