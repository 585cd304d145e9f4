"""A custom encoder/decoder pair: one stride-2 step, so 28x28 digits become 14x14 code maps.

Run the whole pipeline with it:
    vqprior run --config examples/half_res.toml --name half-res --trust-code

(--trust-code: the classes below are code of your own, not vqprior built-ins, and run as you.)
"""

import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class HalfResEncoder(nn.Module):
    """[B, C, H, W] -> [B, code_dim, H/2, W/2]. The pipeline passes in_channels and code_dim."""

    def __init__(self, in_channels: int, code_dim: int, width: int = 32, blocks: int = 2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            *[Residual(width) for _ in range(blocks)],
            nn.ReLU(),
            nn.Conv2d(width, code_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HalfResDecoder(nn.Module):
    """[B, code_dim, h, w] -> [B, C, 2h, 2w]."""

    def __init__(self, in_channels: int, code_dim: int, width: int = 32, blocks: int = 2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(code_dim, width, 3, padding=1),
            *[Residual(width) for _ in range(blocks)],
            nn.ReLU(),
            nn.ConvTranspose2d(width, in_channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
