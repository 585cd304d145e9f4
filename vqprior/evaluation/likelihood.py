"""Likelihood of code maps under a prior."""

from __future__ import annotations

import math

import torch

from ..datasets import to_float
from ..models.priors.base import Prior
from ..runtime import batches

# maps per forward pass: 250 ran ~1.3x faster than 1,000 on 2 CPU cores (the activations stay in cache), same sums
EVAL_BATCH = 250
# the masked kind's objective hides codes drawn per batch, so its batch fixes which codes are hidden: kept as it was
MASKED_BATCH = 1000


@torch.no_grad()
def nll_bits_per_code(prior: Prior, codes: torch.Tensor, labels: torch.Tensor | None) -> float:
    """Mean negative log-likelihood of code maps [N, H, W] in bits per code (times H*W: bits per map)."""
    was_training = prior.training
    prior.eval()
    total = torch.zeros((), dtype=torch.float64, device=codes.device)
    for idx in batches(len(codes), EVAL_BATCH):
        total -= prior.log_prob(codes[idx], None if labels is None else labels[idx]).double().sum()
    prior.train(was_training)
    return total.item() / codes.numel() / math.log(2)


@torch.no_grad()
def masked_bits_per_code(prior: Prior, codes: torch.Tensor, labels: torch.Tensor | None, seed: int = 0) -> float:
    """A masked kind's training objective on held-out maps, with the same hidden codes every call (seeded): the mean
    cross-entropy of the hidden codes given the visible ones, in bits. Not a likelihood of the maps."""
    was_training = prior.training
    prior.eval()
    total, count = 0.0, 0
    devices = [codes.device.index or 0] if codes.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):  # the trainer's random state is left as it was
            torch.manual_seed(seed)
            for idx in batches(len(codes), MASKED_BATCH):
                cond = prior.condition(None if labels is None else labels[idx], len(idx))
                total += float(prior.training_loss(prior, codes[idx], cond)) * len(idx)
                count += len(idx)
    finally:
        prior.train(was_training)
    return total / count / math.log(2)


def pixel_bits(images: torch.Tensor, means: torch.Tensor, sigma: float) -> torch.Tensor:
    """-log2 p(images | means) per image: each pixel's 256 levels under a Gaussian of std `sigma` around
    the mean (in [0, 1]; uint8 means are read as v/255), discretised to the level's bin, the end bins open."""
    v = images.double()
    mean = means.double() / 255 if means.dtype == torch.uint8 else means.double().clamp(0, 1)
    normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
    upper = torch.where(v >= 255, torch.full_like(v, math.inf), (v + 0.5) / 255)
    lower = torch.where(v <= 0, torch.full_like(v, -math.inf), (v - 0.5) / 255)
    p = normal.cdf((upper - mean.to(v.device)) / sigma) - normal.cdf((lower - mean.to(v.device)) / sigma)
    return -p.clamp_min(1e-12).log2().flatten(1).sum(1).cpu()


@torch.no_grad()
def decoder_bits_per_image(vqvae, images: torch.Tensor, sigma: float, device: torch.device) -> torch.Tensor:
    """-log2 p(x | z(x)) per image under the discretised Gaussian around the decoder's output."""
    return torch.cat([pixel_bits(x, mean, sigma) for x, mean in reconstructions(vqvae, images, device)])


@torch.no_grad()
def reconstructions(vqvae, images: torch.Tensor, device: torch.device):
    """(uint8 images, the decoder's float output for them) in batches of EVAL_BATCH, on `device`."""
    for i in range(0, len(images), EVAL_BATCH):
        x = images[i : i + EVAL_BATCH].to(device)
        yield x, vqvae.decode(vqvae.encode(to_float(x)))


def best_sigma(vqvae, images: torch.Tensor, sigmas: list[float], device: torch.device) -> float:
    """The σ of `sigmas` under which the decoder gives `images` the fewest bits (one decoding, every σ scored)."""
    bits = torch.zeros(len(sigmas), dtype=torch.float64)
    for x, mean in reconstructions(vqvae, images, device):
        bits += torch.stack([pixel_bits(x, mean, s).sum() for s in sigmas])
    return sigmas[int(torch.argmin(bits))]
