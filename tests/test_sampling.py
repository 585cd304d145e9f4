import pytest
import torch

from vqprior.models.priors.gated_pixelcnn import GatedPixelCNN
from vqprior.models.priors.base import sample


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


@pytest.mark.parametrize("labels,message", [(torch.tensor([1, 2]), "expected 3 labels"), (torch.tensor([0, 1, 10]), "labels must be in"),
                                            (None, "class-conditional")])
def test_bad_labels_are_clear_errors(labels, message):
    model = random_prior(10)
    with pytest.raises(ValueError, match=message):
        sample(model, 3, (4, 4), labels)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature"):
        sample(random_prior(), 2, (3, 3), temperature=0.0)
