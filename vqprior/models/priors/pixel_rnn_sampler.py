"""Exact incremental samplers of the PixelRNN priors: carry the recurrent states, compute only what a new code changes.

Row LSTM: the state-to-state part of a row's gates is known once the row above is done (one 1 x k convolution
per layer and row); each new code then costs one LSTM step per layer at its own column.
Diagonal BiLSTM: each new code costs one left-to-right step per layer at its position (from the states left
of it and above it); when a row is complete, the right-to-left direction sweeps that row once per layer,
ready to be added to the row below.
Both take the Gumbel noise in the naive sampler's order, so they return the same maps for the same seed.
"""

from __future__ import annotations

import torch

from .base import GumbelNoise, Prior
from .layers import lstm_cell


def _input_bias(layer, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
    bias = layer.input_to_state.bias.expand(batch, -1)
    return (bias + layer.cond(cond) if cond is not None else bias).contiguous()


def _place(codes, i, j, start, model, features, noise, temperature) -> torch.Tensor:
    """The code at (i, j): given when before `start`, else drawn from the logits of `features` and written."""
    if i * codes.shape[2] + j < start:
        return codes[:, i, j]
    code = noise.draw(model.head(features), temperature, i * codes.shape[2] + j)
    codes[:, i, j] = code
    return code


@torch.no_grad()
def draw_row_lstm(
    model: Prior, codes: torch.Tensor, cond: torch.Tensor | None, start: int, temperature: float, noise: GumbelNoise
) -> torch.Tensor:
    batch, height, width = codes.shape
    layers = list(model.layers)
    weight = model.embed.weight
    device, dtype, c = weight.device, weight.dtype, weight.shape[1]
    k2 = layers[0].k2
    in_taps = [[l.input_to_state.weight[:, :, 0, t].t().contiguous() for t in range(l.in_width)] for l in layers]
    in_bias = [_input_bias(l, cond, batch) for l in layers]
    out_mat = [l.out.weight[:, :, 0, 0].t().contiguous() for l in layers]
    hidden = [torch.zeros(batch, c, width, device=device, dtype=dtype) for _ in layers]
    cell = [torch.zeros(batch, c, width, device=device, dtype=dtype) for _ in layers]
    zeros = torch.zeros(batch, c, device=device, dtype=dtype)
    for i in range(height):
        from_above = [l.state_to_state(h) for l, h in zip(layers, hidden)]  # [B, 4C, W]: the row above's share
        inputs = [
            [zeros] * k2 for _ in layers
        ]  # each layer's inputs in this row, one [B, C] per column, k2 zeros first
        new_h, new_c = [[] for _ in layers], [[] for _ in layers]
        for j in range(width):
            for n, layer in enumerate(layers):
                cols = inputs[n]
                gates = in_bias[n] + from_above[n][:, :, j]
                for t in range(layer.in_width):
                    gates = gates.addmm(cols[j + t], in_taps[n][t])
                h, cl = lstm_cell(gates, cell[n][:, :, j])
                new_h[n].append(h)
                new_c[n].append(cl)
                out = torch.addmm(layer.out.bias, h, out_mat[n])
                if not layer.first:
                    out += cols[k2 + j]
                if n + 1 < len(layers):
                    inputs[n + 1].append(out)
            inputs[0].append(model.embed(_place(codes, i, j, start, model, out, noise, temperature)))
        hidden = [torch.stack(h, -1) for h in new_h]
        cell = [torch.stack(cl, -1) for cl in new_c]
    return codes


@torch.no_grad()
def draw_diagonal_bilstm(
    model: Prior,
    codes: torch.Tensor,
    cond: torch.Tensor | None,
    start: int,
    temperature: float,
    noise: GumbelNoise,
) -> torch.Tensor:
    batch, height, width = codes.shape
    layers = list(model.layers)
    weight = model.embed.weight
    device, dtype, c = weight.device, weight.dtype, weight.shape[1]
    in_mat = [l.input_to_state.weight[:, :, 0, 0].t().contiguous() for l in layers]
    in_bias = [_input_bias(l, cond, batch) for l in layers]
    out_mat = [l.out.weight[:, :, 0, 0].t().contiguous() for l in layers]
    # state-to-state taps as matrices: [0] from the row above, [1] from the neighbour in the row
    fwd_taps = [[w.t().contiguous() for w in l.state_to_state[0].chunk(2, 1)] for l in layers]
    bwd_taps = [[w.t().contiguous() for w in l.state_to_state[1].chunk(2, 1)] for l in layers]
    zeros = torch.zeros(batch, c, device=device, dtype=dtype)
    fwd_above = [[zeros] * width for _ in layers]  # forward hidden states of the row above, per column
    bwd_above = [[zeros] * width for _ in layers]  # right-to-left hidden states of the row above
    for i in range(height):
        fwd_row = [[] for _ in layers]
        bwd_inputs = [[] for _ in layers]  # right-to-left input gates of this row, swept when the row is done
        left_h, left_c = [zeros] * len(layers), [zeros] * len(layers)
        previous_code = None
        for j in range(width):
            x = zeros if previous_code is None else model.embed(previous_code)  # the first layer reads (i, j-1)
            for n, layer in enumerate(layers):
                if (
                    layer.first
                ):  # only the left-to-right half: the right-to-left input is the code itself, known after the draw
                    pre_fwd = torch.addmm(in_bias[0][:, : 4 * c], x, in_mat[0][:, : 4 * c])
                else:
                    pre_fwd, pre_bwd = torch.addmm(in_bias[n], x, in_mat[n]).chunk(2, 1)
                    bwd_inputs[n].append(pre_bwd)
                gates = pre_fwd.addmm(fwd_above[n][j], fwd_taps[n][0]).addmm_(left_h[n], fwd_taps[n][1])
                left_h[n], left_c[n] = lstm_cell(gates, left_c[n])
                fwd_row[n].append(left_h[n])
                out = torch.addmm(layer.out.bias, left_h[n] + bwd_above[n][j], out_mat[n])
                if not layer.first:
                    out += x
                x = out
            previous_code = _place(codes, i, j, start, model, x, noise, temperature)
            bwd_inputs[0].append(torch.addmm(in_bias[0][:, 4 * c :], model.embed(previous_code), in_mat[0][:, 4 * c :]))
        if i + 1 == height:
            break
        for n in range(len(layers)):  # row i is complete: sweep it right to left
            right_h = right_c = zeros
            swept = [zeros] * width
            for j in reversed(range(width)):
                gates = bwd_inputs[n][j].addmm(bwd_above[n][j], bwd_taps[n][0]).addmm_(right_h, bwd_taps[n][1])
                right_h, right_c = lstm_cell(gates, right_c)
                swept[j] = right_h
            bwd_above[n], fwd_above[n] = swept, fwd_row[n]
    return codes
