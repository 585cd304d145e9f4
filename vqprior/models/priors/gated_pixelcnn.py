"""Gated PixelCNN over code maps (van den Oord et al., 2016), written with shifted convolutions.

Two stacks per layer remove the blind spot of a plain masked convolution:
- the vertical stack sees every row above and, in its own output, the current row: it reaches the
  horizontal stack only shifted down by one row, so position (i, j) receives rows < i from it;
- the horizontal stack sees the current row up to column j (strictly left of j in the first layer).
Instead of masking full k x k kernels, the kernels are cropped to the half that is allowed (k/2+1 rows,
k/2+1 columns) and inputs are padded on the top/left: the same function, half the multiply-adds. The vertical stack
leaves out the map's last row: it would reach the horizontal stack only at the row below the map, so nothing reads it
(1/H of the vertical stack's multiply-adds; the same function, and bit for bit the same logits and gradients on
the CPU in float32 and bf16 where that was checked).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import GumbelNoise, Prior
from .gated_pixelcnn_sampler import draw_cached
from .layers import OutputHead, gate
from .orders import check_orders, from_order, to_order


class GatedLayer(nn.Module):
    def __init__(self, channels: int, kernel: int, num_classes: int, first: bool):
        super().__init__()
        c, k2 = channels, kernel // 2
        self.channels, self.k2, self.first = c, k2, first
        # first layer: column j must not see itself, so its horizontal kernel stops one short
        self.h_width = k2 if first else k2 + 1
        self.v_conv = nn.Conv2d(c, 2 * c, (k2 + 1, kernel))
        self.h_conv = nn.Conv2d(c, 2 * c, (1, self.h_width))
        self.v_to_h = nn.Conv2d(2 * c, 2 * c, 1)
        self.h_out = nn.Conv2d(c, c, 1)
        # class conditioning: a learned bias per class into every gate of both stacks
        self.cond = nn.Linear(num_classes, 4 * c, bias=False) if num_classes else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """v: the vertical stack [B, C, H - 1, W] (rows above the last; one row when H = 1), h: the horizontal stack
        [B, C, H, W]."""
        height, width = h.shape[-2:]
        k2 = self.k2
        v_pre = self.v_conv(F.pad(v, (k2, k2, k2, 0)))
        h_pre = self.h_conv(F.pad(h, (k2, 0)))[..., :width]
        # rows of the vertical stack reach the horizontal stack one row lower: (i, j) gets row i-1
        h_pre = h_pre + F.pad(self.v_to_h(v_pre), (0, 0, 1, 0))[:, :, :height]
        if cond is not None:
            cv, ch = self.cond(cond).chunk(2, 1)
            v_pre = v_pre + cv[:, :, None, None]
            h_pre = h_pre + ch[:, :, None, None]
        h_new = self.h_out(gate(h_pre))
        if not self.first:  # the first layer's input holds the current code, a residual would leak it
            h_new = h_new + h
        return gate(v_pre), h_new


class GatedPixelCNN(Prior):
    """p(codes) = prod over raster positions of p(code_ij | codes before ij [, class])."""

    def __init__(
        self,
        codebook_size: int,
        channels: int = 64,
        layers: int = 8,
        kernel: int = 3,
        num_classes: int = 0,
        orders: list[str] = (),
    ):
        """orders: other drawing orders to learn beside raster (vqprior/models/priors/orders.py), each by a network
        of the same size trained on the maps turned around: `complete` then continues a kept bottom (reverse),
        left (transpose) or right (reverse_transpose) part exactly, as it does a kept top. Each order costs
        another network's training time; the likelihood, sampling and evaluation are the raster network's."""
        super().__init__()
        if kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and at least 3 (3, 5, 7, ...), got {kernel}")
        if layers < 1 or channels < 1:
            raise ValueError(f"layers and channels must be >= 1, got {layers} and {channels}")
        self.codebook_size, self.num_classes = codebook_size, num_classes
        self.embed = nn.Embedding(codebook_size, channels)
        self.layers = nn.ModuleList(GatedLayer(channels, kernel, num_classes, first=i == 0) for i in range(layers))
        # per-position output head (Linear on channels-last == 1x1 convolution)
        self.head = OutputHead(channels, codebook_size)
        # built after the raster network's layers, so that without orders its initialisation is what it always was
        self.orders = nn.ModuleDict(
            {o: GatedPixelCNN(codebook_size, channels, layers, kernel, num_classes) for o in check_orders(orders)}
        )

    def features(self, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """codes [B, H, W] -> last horizontal-stack features [B, C, H, W]."""
        return self.stacks(self.embed(codes).permute(0, 3, 1, 2), cond)

    def stacks(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Embedded codes [B, C, H, W] -> last horizontal-stack features [B, C, H, W]."""
        v, h = x[:, :, : max(1, x.shape[2] - 1)], x  # the last row's vertical stack would feed no position
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return h

    def logits(self, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """codes [B, H, W] (long) -> logits [B, K, H, W]."""
        h = self.features(codes, cond)
        return self.head(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None, every_order: bool = False):
        """Raster logits [B, K, H, W]; with every_order, each order's logits laid back out in raster layout,
        stacked [1 + len(orders), B, K, H, W] (what stage 3 trains, through DDP when there are several processes)."""
        cond = self.condition(labels, codes.shape[0], check=not every_order)
        logits = self.logits(codes, cond)
        if not every_order:
            return logits
        turned = [from_order(m.logits(to_order(codes, o), cond), o) for o, m in self.orders.items()]
        return torch.stack([logits, *turned])

    def training_loss(self, forward, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The raster network's mean NLL per code, plus each other order's (their parameters are disjoint, so each
        network trains as it would alone)."""
        if not len(self.orders):
            return super().training_loss(forward, codes, cond)
        logits = forward(codes, cond, True).float()
        return sum(F.cross_entropy(member, codes) for member in logits)

    def order(self, name: str) -> "GatedPixelCNN | None":
        """The network of one drawing order (raster: this one), or None when it was not trained."""
        return self if name == "raster" else self.orders[name] if name in self.orders else None

    def draw(
        self, codes: torch.Tensor, cond: torch.Tensor | None, start: int, temperature: float, noise: GumbelNoise
    ) -> torch.Tensor:
        return draw_cached(self, codes, cond, start, temperature, noise)
