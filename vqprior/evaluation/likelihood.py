"""Likelihood of code maps under a prior."""

from __future__ import annotations

import math

import torch

from ..models.priors.base import Prior
from ..runtime import batches

EVAL_BATCH = 1000


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
            for idx in batches(len(codes), EVAL_BATCH):
                cond = prior.condition(None if labels is None else labels[idx], len(idx))
                total += float(prior.training_loss(prior, codes[idx], cond)) * len(idx)
                count += len(idx)
    finally:
        prior.train(was_training)
    return total / count / math.log(2)
