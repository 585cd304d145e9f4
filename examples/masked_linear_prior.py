"""Your own prior: any subclass of vqprior's `Prior` that returns causal logits [B, K, H, W].

This one is deliberately tiny: a masked linear map from the one-hot codes before each position to the
logits at that position (a one-layer MADE in raster order). Use it with

    vqprior run --set 'prior.network={target="examples/masked_linear_prior.py:MaskedLinearPrior", params={height=7, width=7}}'

vqprior fills in codebook_size and num_classes, probes the module (shape and causality) before training,
and samples from it with the reference sampler (`Prior.draw`), since it brings no faster one of its own.
"""

import torch
import torch.nn.functional as F
from torch import nn

from vqprior.models.priors.base import Prior


class MaskedLinearPrior(Prior):
    def __init__(self, codebook_size: int, num_classes: int = 0, height: int = 7, width: int = 7):
        super().__init__()
        self.codebook_size, self.num_classes, self.height, self.width = codebook_size, num_classes, height, width
        n, k = height * width, codebook_size
        self.weight = nn.Parameter(0.01 * torch.randn(n, k, n, k))  # [out position, out code, in position, in code]
        self.bias = nn.Parameter(torch.zeros(n, k))
        self.class_bias = nn.Linear(num_classes, n * k, bias=False) if num_classes else None
        # position p may only read positions before it
        self.register_buffer("mask", torch.tril(torch.ones(n, n), diagonal=-1)[:, None, :, None])

    def logits(self, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        b, rows, width = codes.shape  # the reference sampler may pass only the first rows
        n = rows * width
        x = F.one_hot(codes.reshape(b, n), self.codebook_size).float()
        w = (self.weight * self.mask)[:n, :, :n, :]
        out = torch.einsum("bik,ojik->boj", x, w) + self.bias[:n]
        if cond is not None:
            out = out + self.class_bias(cond).view(b, -1, self.codebook_size)[:, :n]
        return out.view(b, rows, width, self.codebook_size).permute(0, 3, 1, 2)
