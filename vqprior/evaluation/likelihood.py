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
