import pytest
import torch

from vqprior.models.priors.base import sample
from vqprior.models.priors.gated_pixelcnn import GatedPixelCNN


def random_prior(num_classes=0, codebook=16, channels=8, layers=4, kernel=3, seed=0):
    torch.manual_seed(seed)
    model = GatedPixelCNN(codebook, channels=channels, layers=layers, kernel=kernel, num_classes=num_classes).double()
    with torch.no_grad():  # larger weights and biases than the default init, so every path matters
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("num_classes", [0, 10])
@pytest.mark.parametrize("grid,kernel", [((7, 7), 3), ((5, 9), 3), ((6, 4), 5), ((14, 14), 3)])
def test_cached_sampler_draws_exactly_the_naive_samples(num_classes, grid, kernel):
    model = random_prior(num_classes, kernel=kernel)
    labels = torch.arange(6) % num_classes if num_classes else None
    for seed in (0, 1, 2):
        naive = sample(model, 6, grid, labels, temperature=1.0, seed=seed, method="naive")
        cached = sample(model, 6, grid, labels, temperature=1.0, seed=seed, method="cached")
        assert torch.equal(naive, cached)
        assert len(naive.unique()) > 3  # not a degenerate constant map


def test_cached_sampler_matches_naive_with_soft_labels_and_temperature():
    model = random_prior(4)
    soft = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    naive = sample(model, 3, (7, 7), soft, temperature=0.7, seed=5, method="naive")
    cached = sample(model, 3, (7, 7), soft, temperature=0.7, seed=5, method="cached")
    assert torch.equal(naive, cached)


def test_cached_sampler_matches_naive_in_float32():
    model = random_prior(10).float()
    labels = torch.arange(20) % 10
    naive = sample(model, 20, (7, 7), labels, seed=3, method="naive")
    cached = sample(model, 20, (7, 7), labels, seed=3, method="cached")
    assert (naive == cached).float().mean() == 1.0


@pytest.mark.parametrize("method", ["naive", "cached"])
def test_low_temperature_sampling_is_greedy_decoding_of_the_model(method):
    # at T -> 0 every code is the argmax of the teacher-forced logits given the codes before it
    model = random_prior(3)
    labels = torch.tensor([0, 1, 2])
    codes = sample(model, 3, (5, 6), labels, temperature=1e-6, seed=0, method=method)
    assert torch.equal(model(codes, labels).argmax(1), codes)


def test_same_seed_same_samples_and_the_cache_resets_between_calls():
    model = random_prior(10)
    labels = torch.arange(10)
    first = sample(model, 10, (7, 7), labels, seed=11)
    sample(model, 4, (5, 3), torch.tensor([1, 2, 3, 4]), seed=99)  # a different call in between
    again = sample(model, 10, (7, 7), labels, seed=11)
    other = sample(model, 10, (7, 7), labels, seed=12)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_sampling_follows_the_model_distribution():
    # one-position maps: empirical frequencies of 4000 draws match the softmax of the logits
    model = random_prior(0, codebook=6)
    codes = sample(model, 4000, (1, 1), seed=0)
    probs = torch.softmax(model(torch.zeros(1, 1, 1, dtype=torch.long))[0, :, 0, 0], 0)
    freq = torch.bincount(codes.flatten(), minlength=6).double() / 4000
    assert (freq - probs).abs().max() < 0.03


@pytest.mark.parametrize(
    "labels,message",
    [
        (torch.tensor([1, 2]), "expected 3 labels"),
        (torch.tensor([0, 1, 10]), "labels must be in"),
        (None, "class-conditional"),
    ],
)
def test_bad_labels_are_clear_errors(labels, message):
    model = random_prior(10)
    with pytest.raises(ValueError, match=message):
        sample(model, 3, (4, 4), labels)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature"):
        sample(random_prior(), 2, (3, 3), temperature=0.0)


@pytest.mark.parametrize("keep", [1, 7, 10, 24, 48])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_continuing_a_prefix_cached_equals_naive_and_keeps_the_prefix(keep, num_classes):
    model = random_prior(num_classes)
    labels = torch.arange(5) % num_classes if num_classes else None
    prefix = torch.randint(0, 16, (5, 7, 7), generator=torch.Generator().manual_seed(1))
    naive = sample(model, 5, (7, 7), labels, seed=4, method="naive", prefix=prefix, keep=keep)
    cached = sample(model, 5, (7, 7), labels, seed=4, method="cached", prefix=prefix, keep=keep)
    assert torch.equal(naive, cached)
    assert torch.equal(cached.view(5, -1)[:, :keep], prefix.view(5, -1)[:, :keep])
    assert not torch.equal(cached.view(5, -1)[:, keep:], prefix.view(5, -1)[:, keep:])


def test_map_noise_depends_on_seed_and_index_not_on_batching():
    from vqprior.models.priors.base import generate

    model = random_prior(10)
    labels = torch.arange(150) % 10
    whole = generate(model, 150, (7, 7), labels, 1.0, seed=3, batch_size=1000)
    pieces = generate(model, 150, (7, 7), labels, 1.0, seed=3, batch_size=50)
    assert torch.equal(whole, pieces)
    # seed 3's second block is not seed 4's first block (chunk seeds used to be seed + chunk)
    seed4 = generate(model, 150, (7, 7), torch.cat([labels[50:], labels[:50]]), 1.0, seed=4, batch_size=50)
    assert (whole[50:100] != seed4[:50]).any()


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0])
def test_non_finite_temperature_is_refused(bad):
    with pytest.raises(ValueError, match="temperature"):
        sample(random_prior(), 2, (3, 3), temperature=bad)


def test_soft_labels_change_the_samples():
    model = random_prior(10)
    hard = sample(model, 20, (7, 7), torch.full((20,), 3), seed=0)
    soft_w = torch.zeros(20, 10, dtype=torch.float64)
    soft_w[:, 3] = soft_w[:, 8] = 0.5
    soft = sample(model, 20, (7, 7), soft_w, seed=0)
    one_hot = torch.nn.functional.one_hot(torch.full((20,), 3), 10).double()
    assert torch.equal(sample(model, 20, (7, 7), one_hot, seed=0), hard)  # a one-hot soft label is the hard label
    assert (soft != hard).float().mean() > 0.2


def test_log_prob_is_the_sum_of_per_position_log_softmax():
    model = random_prior(10)
    codes = torch.randint(0, 16, (3, 5, 4))
    labels = torch.tensor([1, 2, 3])
    logp = torch.log_softmax(model(codes, labels), 1)
    ref = torch.stack([sum(logp[b, codes[b, i, j], i, j] for i in range(5) for j in range(4)) for b in range(3)])
    assert torch.allclose(model.log_prob(codes, labels), ref)


@pytest.mark.parametrize("scale", [0.0, 2.0, 3.5])
def test_guided_cached_sampler_equals_guided_naive(scale):
    model = random_prior(10)
    labels = torch.arange(8) % 10
    naive = sample(model, 8, (7, 7), labels, seed=2, method="naive", guidance=scale)
    cached = sample(model, 8, (7, 7), labels, seed=2, method="cached", guidance=scale)
    assert torch.equal(naive, cached)
    assert not torch.equal(cached, sample(model, 8, (7, 7), labels, seed=2))  # guidance changes the samples


def test_guidance_zero_is_the_null_condition_and_one_is_plain_sampling():
    model = random_prior(10)
    labels = torch.arange(8) % 10
    assert torch.equal(sample(model, 8, (7, 7), labels, seed=2, guidance=1.0), sample(model, 8, (7, 7), labels, seed=2))
    null = torch.zeros(8, 10, dtype=torch.float64)  # the all-zero soft label is the null condition
    assert torch.equal(sample(model, 8, (7, 7), labels, seed=2, guidance=0.0), sample(model, 8, (7, 7), null, seed=2))


@pytest.mark.parametrize("ramp", [(1.0, 3.0), (3.0, 0.5)])
@pytest.mark.parametrize("grid", [(7, 7), (5, 4)])
def test_a_guidance_ramp_is_drawn_alike_by_both_samplers_and_runs_from_first_to_last(ramp, grid):
    model = random_prior(10)
    labels = torch.arange(8) % 10
    cached = sample(model, 8, grid, labels, seed=2, method="cached", guidance=ramp)
    assert torch.equal(sample(model, 8, grid, labels, seed=2, method="naive", guidance=ramp), cached)
    first, last = (sample(model, 8, grid, labels, seed=2, guidance=g) for g in ramp)
    assert not torch.equal(cached, first) and not torch.equal(cached, last)
    assert torch.equal(cached[:, 0, 0], first[:, 0, 0])  # position 0 is drawn at the first scale
    # the last position, every other one given: drawn at the last scale
    end = grid[0] * grid[1] - 1
    given = sample(model, 8, grid, labels, seed=2, prefix=cached, keep=end, guidance=ramp)
    at_last = sample(model, 8, grid, labels, seed=2, prefix=cached, keep=end, guidance=ramp[1])
    assert torch.equal(given, at_last)


def test_a_flat_ramp_is_the_constant_scale_bit_for_bit():
    model = random_prior(10)
    labels = torch.arange(8) % 10
    assert torch.equal(
        sample(model, 8, (7, 7), labels, seed=2, guidance=(2.0, 2.0)),
        sample(model, 8, (7, 7), labels, seed=2, guidance=2.0),
    )
    assert torch.equal(
        sample(model, 8, (7, 7), labels, seed=2, guidance=[1, 1]), sample(model, 8, (7, 7), labels, seed=2)
    )


def test_guided_logits_of_whole_maps_and_of_their_first_rows_get_each_positions_scale():
    from vqprior.guidance import scales
    from vqprior.models.priors.base import guided_logits

    logits = torch.randn(4, 3, 4, 5, dtype=torch.float64)  # a doubled batch of 2 maps, K=3, a 4x5 grid
    ramp, grid = (0.5, 2.5), (4, 5)
    cond, uncond = logits.chunk(2)
    s = torch.tensor(scales(ramp, 20), dtype=torch.float64).view(4, 5)
    expected = uncond + s * (cond - uncond)
    assert torch.allclose(guided_logits(logits, ramp, grid), expected)
    assert torch.allclose(guided_logits(logits[:, :, :2], ramp, grid), expected[:, :, :2])  # first rows keep places
    assert torch.allclose(guided_logits(logits.flatten(2), ramp, grid), expected.flatten(2))  # [B, K, H * W]
    assert torch.allclose(guided_logits(logits[:, :, 1, 3], ramp, grid, position=8), expected[:, :, 1, 3])
    with pytest.raises(ValueError, match="which position"):
        guided_logits(logits[:, :, 1, 3], ramp, grid)
