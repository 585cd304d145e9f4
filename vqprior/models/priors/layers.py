"""The pieces that a model and its incremental sampler both use: written once, so the full-map pass and the
cached sampler compute the same function (the samplers' exactness tests compare them bitwise)."""

from __future__ import annotations

import torch
from torch import nn


def gate(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The gated activation tanh(a) * sigmoid(b) over the two halves of `dim` (gated PixelCNN layers)."""
    a, b = x.chunk(2, dim)
    return torch.tanh(a) * torch.sigmoid(b)


def lstm_cell(gates: torch.Tensor, cell: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """gates [.., 4C, ..] (input, forget, output, candidate along dim), previous cell -> (hidden, cell)."""
    i, f, o, g = gates.chunk(4, dim)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


class OutputHead(nn.Sequential):
    """The per-position head of the convolutional and recurrent priors: ReLU, Linear, ReLU, Linear on channels-last
    features [..., C] -> logits [..., K] (a 1x1 convolution; its weights keep the names head.1.* and head.3.*)."""

    def __init__(self, channels: int, codebook_size: int):
        super().__init__(nn.ReLU(), nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, codebook_size))
