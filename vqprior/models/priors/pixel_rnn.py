"""The two recurrent priors of the PixelRNN paper (van den Oord et al., 2016), over code maps.

Both embed the codes, stack LSTM layers with residual connections (from the second layer on: the first layer's
input holds the current code, so a residual there would leak it) and end in the same per-position head as the
gated PixelCNN. Class information enters every layer as a learned bias per gate.

- `RowLSTM`: row by row. Input-to-state is a 1 x k convolution over the current row, masked to the columns left
  of j in the first layer and up to j after; state-to-state is a 1 x k convolution over the previous row's hidden
  state. Each row above adds k//2 columns on either side: the context is a triangle, so a position misses the
  codes far to its upper right (and, in its own row, those more than layers * k//2 to its left).
- `DiagonalBiLSTM`: two LSTMs run along the diagonals. Skewing row i by i columns turns the diagonals into
  columns; a 2 x 1 state-to-state kernel then gives position (i, j) the states of (i-1, j) and (i, j-1).
  The second direction runs on the mirrored map, so it reaches (i-1, j) and (i, j+1); its output is moved down
  one row, so row i only receives it from rows above, which are complete. In the first layer the left-to-right
  direction reads the code left of each position (1 x 1 input-to-state on the map shifted right by one column),
  the right-to-left direction the code itself. Together: the full context.

The recurrences are written once (`lstm_cell`) and used by both the full-map pass here and the incremental
samplers in pixel_rnn_sampler.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import GumbelNoise, Prior
from .layers import OutputHead, lstm_cell
from .pixel_rnn_sampler import draw_diagonal_bilstm, draw_row_lstm


class _RecurrentPrior(Prior):
    """Embedding -> layers(x, cond) -> head; subclasses set self.layers."""

    def __init__(self, codebook_size: int, channels: int, layers: int, num_classes: int):
        super().__init__()
        if layers < 1 or channels < 1:
            raise ValueError(f"layers and channels must be >= 1, got {layers} and {channels}")
        self.codebook_size, self.num_classes = codebook_size, num_classes
        self.embed = nn.Embedding(codebook_size, channels)
        self.head = OutputHead(channels, codebook_size)

    def features(self, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        x = self.embed(codes).permute(0, 3, 1, 2)
        for layer in self.layers:
            x = layer(x, cond)
        return x

    def logits(self, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.head(self.features(codes, cond).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class RowLSTMLayer(nn.Module):
    def __init__(self, channels: int, kernel: int, num_classes: int, first: bool):
        super().__init__()
        c, k2 = channels, kernel // 2
        self.k2, self.first = k2, first
        # first layer: column j must not see its own code, so the row kernel stops one short of it
        self.in_width = k2 if first else k2 + 1
        self.input_to_state = nn.Conv2d(c, 4 * c, (1, self.in_width))
        self.state_to_state = nn.Conv1d(c, 4 * c, kernel, padding=k2, bias=False)
        self.out = nn.Conv2d(c, c, 1)
        self.cond = nn.Linear(num_classes, 4 * c, bias=False) if num_classes else None
        with torch.no_grad():  # forget gates start open, so the state carries over rows from the beginning
            self.input_to_state.bias[c : 2 * c].fill_(1.0)

    def input_gates(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """x [B, C, H, W] -> input-to-state part of the gates [B, 4C, H, W] (class bias included)."""
        pre = self.input_to_state(F.pad(x, (self.k2, 0)))[..., : x.shape[-1]]
        return pre if cond is None else pre + self.cond(cond)[:, :, None, None]

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        batch, c, height, width = x.shape
        pre = self.input_gates(x, cond)
        hidden = cell = x.new_zeros(batch, c, width)
        rows = []
        for pre_row in pre.unbind(2):
            hidden, cell = lstm_cell(pre_row + self.state_to_state(hidden), cell)
            rows.append(hidden)
        y = self.out(torch.stack(rows, 2))
        return y if self.first else y + x


class RowLSTM(_RecurrentPrior):
    """PixelRNN Row LSTM prior: a triangular context above each position, computed one row at a time."""

    def __init__(self, codebook_size: int, channels: int = 64, layers: int = 4, kernel: int = 3, num_classes: int = 0):
        if kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and at least 3 (3, 5, 7, ...), got {kernel}")
        super().__init__(codebook_size, channels, layers, num_classes)
        self.layers = nn.ModuleList(RowLSTMLayer(channels, kernel, num_classes, first=i == 0) for i in range(layers))

    def draw(
        self, codes: torch.Tensor, cond: torch.Tensor | None, start: int, temperature: float, noise: GumbelNoise
    ) -> torch.Tensor:
        return draw_row_lstm(self, codes, cond, start, temperature, noise)


def skew(x: torch.Tensor) -> torch.Tensor:
    """[..., H, W] -> [..., H, W + H - 1] with row i moved i columns to the right (zeros elsewhere).
    Padding each row with H zeros and re-reading the flat data H - 1 wide does it without a loop (and without
    the slice-assignment backward that would fill a whole zero tensor per row)."""
    height, width = x.shape[-2:]
    flat = F.pad(x, (0, height)).flatten(-2)[..., : height * (width + height - 1)]
    return flat.unflatten(-1, (height, width + height - 1))


def unskew(x: torch.Tensor, width: int) -> torch.Tensor:
    """The inverse of skew: [..., H, W + H - 1] -> [..., H, W]."""
    height = x.shape[-2]
    flat = F.pad(x.flatten(-2), (0, height))
    return flat.unflatten(-1, (height, width + height))[..., :width]


def diagonal_lstm(pre: torch.Tensor, state_weight: torch.Tensor) -> torch.Tensor:
    """LSTMs along the diagonals, several directions at once: input gates pre [D, B, 4C, H, W] and state-to-state
    weights [D, 4C, 2C] (taps on the state above and on the state to the left) -> hidden states [D, B, C, H, W].
    (i, j) gets the hidden states of (i-1, j) and (i, j-1) and the cell of (i, j-1); states outside the map are 0.
    Skewed, the diagonals are columns, so the loop runs over W + H - 1 columns, each one batched matrix product."""
    dirs, batch, c4, height, width = pre.shape
    c = c4 // 4
    skewed = skew(pre).permute(4, 0, 2, 1, 3).reshape(-1, dirs, c4, batch * height)  # [columns, D, 4C, B*H]
    # per skewed column, the rows whose diagonal has started and not ended; the others keep a zero state, so the
    # boundary is zero, as in the sampler
    rows, cols = torch.arange(height, device=pre.device), torch.arange(len(skewed), device=pre.device)[:, None]
    inside = ((rows <= cols) & (cols < rows + width)).to(pre.dtype)
    hidden = cell = pre.new_zeros(dirs, c, batch, height)
    columns = []
    for pre_col, inside_col in zip(skewed.unbind(0), inside):  # unbind: one backward op, not a zero tensor per column
        above = F.pad(hidden, (1, 0))[..., :height]  # skewed row r-1 of the previous column is (i-1, j)
        state = torch.cat([above, hidden], 1).view(dirs, 2 * c, batch * height)
        gates = torch.baddbmm(pre_col, state_weight, state)
        hidden, cell = lstm_cell(gates.view(dirs, c4, batch, height), cell)
        hidden, cell = hidden * inside_col, cell * inside_col
        columns.append(hidden)
    return unskew(torch.stack(columns, -1).transpose(1, 2), width)


class DiagonalBiLSTMLayer(nn.Module):
    def __init__(self, channels: int, num_classes: int, first: bool):
        super().__init__()
        c = channels
        self.first = first
        self.input_to_state = nn.Conv2d(c, 8 * c, 1)  # both directions' gates
        # per direction (left-to-right, right-to-left on the mirrored map): the 2 x 1 skewed state-to-state kernel,
        # as a matrix over [state above, state before in the row]
        self.state_to_state = nn.Parameter(torch.empty(2, 4 * c, 2 * c).uniform_(-((2 * c) ** -0.5), (2 * c) ** -0.5))
        self.out = nn.Conv2d(c, c, 1)
        self.cond = nn.Linear(num_classes, 8 * c, bias=False) if num_classes else None
        with torch.no_grad():
            self.input_to_state.bias[c : 2 * c].fill_(1.0)
            self.input_to_state.bias[5 * c : 6 * c].fill_(1.0)

    def input_gates(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] -> input gates of the left-to-right and right-to-left directions, [B, 4C, H, W] each.
        In the first layer the left-to-right direction reads the code left of each position (the map shifted right
        by one column); the right-to-left one reads the code itself, as its output only reaches the rows below."""
        weight, bias = self.input_to_state.weight, self.input_to_state.bias
        half = weight.shape[0] // 2
        x_fwd = F.pad(x, (1, 0))[..., : x.shape[-1]] if self.first else x
        pre_fwd, pre_bwd = F.conv2d(x_fwd, weight[:half], bias[:half]), F.conv2d(x, weight[half:], bias[half:])
        if cond is not None:
            cond_fwd, cond_bwd = self.cond(cond)[:, :, None, None].chunk(2, 1)
            pre_fwd, pre_bwd = pre_fwd + cond_fwd, pre_bwd + cond_bwd
        return pre_fwd, pre_bwd

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        height = x.shape[-2]
        pre_fwd, pre_bwd = self.input_gates(x, cond)
        h_fwd, h_bwd = diagonal_lstm(torch.stack([pre_fwd, pre_bwd.flip(-1)]), self.state_to_state)
        h_bwd = h_bwd.flip(-1)
        h_bwd = F.pad(h_bwd, (0, 0, 1, 0))[:, :, :height]  # row i gets the right-to-left states of row i-1
        y = self.out(h_fwd + h_bwd)
        return y if self.first else y + x


class DiagonalBiLSTM(_RecurrentPrior):
    """PixelRNN Diagonal BiLSTM prior: every earlier position is in the context of every later one."""

    def __init__(self, codebook_size: int, channels: int = 64, layers: int = 4, num_classes: int = 0):
        super().__init__(codebook_size, channels, layers, num_classes)
        self.layers = nn.ModuleList(DiagonalBiLSTMLayer(channels, num_classes, first=i == 0) for i in range(layers))

    def draw(
        self, codes: torch.Tensor, cond: torch.Tensor | None, start: int, temperature: float, noise: GumbelNoise
    ) -> torch.Tensor:
        return draw_diagonal_bilstm(self, codes, cond, start, temperature, noise)
