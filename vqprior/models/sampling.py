"""Drawing code maps from a GatedPixelCNN, one position at a time in raster order.

Both samplers draw position (i, j) as argmax(logits / T + Gumbel noise) with the noise taken from one
generator in the same order, so for the same model, seed, temperature and labels they return the same maps.

- naive: re-runs the network on the rows generated so far for every position (H*W passes); the reference.
- cached: keeps each layer's activations and computes, per position, only what the new code changes:
  the horizontal stack at that one column and, when a row is complete, the vertical stack for that row.
  One whole map costs about one forward pass of the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .pixelcnn import GatedPixelCNN, gate


def _draw(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    gumbel = u.clamp_(min=torch.finfo(u.dtype).tiny).log_().neg_().log_().neg_()
    scaled = logits if temperature == 1.0 else logits / temperature
    return gumbel.add_(scaled).argmax(1)


@torch.no_grad()
def sample_naive(model: GatedPixelCNN, cond: torch.Tensor | None, batch: int, grid: tuple[int, int],
                 temperature: float, generator: torch.Generator) -> torch.Tensor:
    height, width = grid
    device = model.embed.weight.device
    codes = torch.zeros(batch, height, width, dtype=torch.long, device=device)
    for i in range(height):
        for j in range(width):
            # rows below i cannot influence row i, so they are not computed; only one position gets logits
            h = model.features(codes[:, : i + 1], cond)
            codes[:, i, j] = _draw(model.head(h[:, :, i, j]), temperature, generator)
    return codes


@torch.no_grad()
def sample_cached(model: GatedPixelCNN, cond: torch.Tensor | None, batch: int, grid: tuple[int, int],
                  temperature: float, generator: torch.Generator) -> torch.Tensor:
    height, width = grid
    weight = model.embed.weight
    device, dtype, c = weight.device, weight.dtype, weight.shape[1]
    layers = list(model.layers)
    k2 = layers[0].k2
    codes = torch.zeros(batch, height, width, dtype=torch.long, device=device)

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
    kernel = 2 * k2 + 1
    # what row i's horizontal stack adds before its gate: bias, class bias and row i-1 of the vertical stack
    base_bias = []
    for l, ch in zip(layers, cond_h):
        b = l.h_conv.bias.expand(batch, width, 2 * c)
        base_bias.append((b + ch[:, None, :] if ch is not None else b).contiguous())
    row_bias = list(base_bias)

    head = model.head  # ReLU, Linear, ReLU, Linear on channels
    for i in range(height):
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
            logits = F.linear(F.linear(out.relu(), head[1].weight, head[1].bias).relu_(), head[3].weight, head[3].bias)
            code = _draw(logits, temperature, generator)
            codes[:, i, j] = code
            h_cols[0].append(model.embed(code))
        if i + 1 == height:
            break
        # row i is complete: advance the vertical stack by one row and prepare row i+1's horizontal bias
        v_in = model.embed(codes[:, i])  # [B, W, C]
        for n, layer in enumerate(layers):
            v_window[n] = torch.cat([v_window[n][:, 1:], F.pad(v_in, (0, 0, k2, k2)).unsqueeze(1)], dim=1)
            patches = v_window[n].unfold(2, kernel, 1).permute(0, 2, 1, 4, 3).reshape(batch * width, -1)
            v_pre = torch.addmm(layer.v_conv.bias, patches, v_mat[n])  # [B*W, 2C]
            row_bias[n] = torch.addmm(layer.v_to_h.bias, v_pre, v_to_h_mat[n]).view(batch, width, 2 * c).add_(base_bias[n])
            v_pre = v_pre.view(batch, width, 2 * c)
            if cond_v[n] is not None:
                v_pre = v_pre + cond_v[n][:, None, :]
            v_in = gate(v_pre, dim=2)
    return codes


SAMPLERS = {"naive": sample_naive, "cached": sample_cached}


def sample(model: GatedPixelCNN, batch: int, grid: tuple[int, int], labels: torch.Tensor | None = None,
           temperature: float = 1.0, seed: int = 0, method: str = "cached") -> torch.Tensor:
    """Draw `batch` code maps [B, H, W]; labels: int [B], soft class weights [B, num_classes], or None."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {sorted(SAMPLERS)}")
    device = model.embed.weight.device
    if labels is not None:
        labels = labels.to(device)
    cond = model.condition(labels, batch)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        return SAMPLERS[method](model, cond, batch, grid, temperature, generator)
    finally:
        model.train(was_training)
