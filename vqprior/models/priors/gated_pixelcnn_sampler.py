"""The gated PixelCNN's exact incremental sampler.

It keeps each layer's activations and computes, per position, only what the new code changes: the
horizontal stack at that one column and, when a row is complete, the vertical stack for that row. One
whole map costs about one forward pass. It takes the Gumbel noise in the same order as the naive
reference sampler (`Prior.draw`), so both return the same maps for the same seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import GumbelNoise, Prior
from .layers import gate


@torch.no_grad()
def draw_cached(
    model: Prior,  # a GatedPixelCNN (which imports this module, never the other way round)
    codes: torch.Tensor,
    cond: torch.Tensor | None,
    start: int,
    temperature: float,
    noise: GumbelNoise,
) -> torch.Tensor:
    """Fill codes [B, H, W] from raster position `start` on; the same maps as the naive sampler, in about one
    forward pass. Rows that are given whole only advance the vertical stack."""
    batch, height, width = codes.shape
    weight = model.embed.weight
    device, dtype, c = weight.device, weight.dtype, weight.shape[1]
    layers = list(model.layers)
    k2 = layers[0].k2

    # per-layer constants: horizontal kernels as matrices over a channels-last window, 1x1 convs as matrices
    h_taps = [[l.h_conv.weight[:, :, 0, t].t().contiguous() for t in range(l.h_width)] for l in layers]
    out_mat = [l.h_out.weight[:, :, 0, 0].t().contiguous() for l in layers]
    out_bias = [l.h_out.bias for l in layers]
    if cond is not None:
        cond_v, cond_h = zip(*(l.cond(cond).chunk(2, 1) for l in layers))
    else:
        cond_v = cond_h = [None] * len(layers)

    # vertical stack, channels-last: the last k2+1 input rows of every layer, zero-padded like the convolution;
    # its kernels as matrices over an unfolded (rows, columns, channels) window
    v_window = [torch.zeros(batch, k2 + 1, width + 2 * k2, c, device=device, dtype=dtype) for _ in layers]
    v_mat = [l.v_conv.weight.permute(0, 2, 3, 1).reshape(2 * c, -1).t().contiguous() for l in layers]
    v_to_h_mat = [l.v_to_h.weight[:, :, 0, 0].t().contiguous() for l in layers]
    # what row i's horizontal stack adds before its gate: bias, class bias and row i-1 of the vertical stack
    base_bias = []
    for l, ch in zip(layers, cond_h):
        b = l.h_conv.bias.expand(batch, width, 2 * c)
        base_bias.append((b + ch[:, None, :] if ch is not None else b).contiguous())
    row_bias = list(base_bias)

    for i in range(height):
        if (i + 1) * width <= start:  # a given row: nothing to draw, its horizontal stack feeds no later row
            _advance_vertical(model, layers, codes[:, i], v_window, v_mat, v_to_h_mat, cond_v, base_bias, row_bias, k2)
            continue
        # horizontal stack inputs of the current row, one contiguous [B, C] tensor per column (k2 zeros first):
        # each kernel tap is then one matrix product with no copy
        zeros = torch.zeros(batch, c, device=device, dtype=dtype)
        h_cols = [[zeros] * k2 for _ in layers]
        for j in range(width):
            for n, layer in enumerate(layers):
                cols = h_cols[n]
                pre = torch.addmm(row_bias[n][:, j], cols[j], h_taps[n][0])
                for t in range(1, layer.h_width):
                    pre.addmm_(cols[j + t], h_taps[n][t])
                out = torch.addmm(out_bias[n], gate(pre), out_mat[n])
                if not layer.first:
                    out += cols[k2 + j]
                if n + 1 < len(layers):
                    h_cols[n + 1].append(out)
            if i * width + j < start:
                code = codes[:, i, j]
            else:
                code = noise.draw(model.head(out), temperature, i * width + j)
                codes[:, i, j] = code
            h_cols[0].append(model.embed(code))
        if i + 1 == height:
            break
        # row i is complete: advance the vertical stack by one row and prepare row i+1's horizontal bias
        _advance_vertical(model, layers, codes[:, i], v_window, v_mat, v_to_h_mat, cond_v, base_bias, row_bias, k2)
    return codes


def _advance_vertical(model, layers, row_codes, v_window, v_mat, v_to_h_mat, cond_v, base_bias, row_bias, k2) -> None:
    """Push one finished row of codes through every layer's vertical stack (channels-last, in place)."""
    batch, width = row_codes.shape
    kernel = 2 * k2 + 1
    v_in = model.embed(row_codes)  # [B, W, C]
    for n, layer in enumerate(layers):
        v_window[n] = torch.cat([v_window[n][:, 1:], F.pad(v_in, (0, 0, k2, k2)).unsqueeze(1)], dim=1)
        patches = v_window[n].unfold(2, kernel, 1).permute(0, 2, 1, 4, 3).reshape(batch * width, -1)
        v_pre = torch.addmm(layer.v_conv.bias, patches, v_mat[n])  # [B*W, 2C]
        row_bias[n] = torch.addmm(layer.v_to_h.bias, v_pre, v_to_h_mat[n]).view(batch, width, -1).add_(base_bias[n])
        v_pre = v_pre.view(batch, width, -1)
        if cond_v[n] is not None:
            v_pre = v_pre + cond_v[n][:, None, :]
        v_in = gate(v_pre, dim=2)
