"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each D-vector of the encoder's latent is projected to len(levels) numbers; number i is squashed into a bounded
range and rounded to one of levels[i] values. The code is the tuple of rounded values, numbered as a mixed-radix
integer in 0..K-1 with K = prod(levels), so code maps look exactly like the EMA quantizer's and every prior kind
works unchanged. There is no codebook to learn, hence no commitment loss, no EMA and no dead codes to re-seed:
every point of the grid is reachable by construction. Rounding passes the gradient straight through.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .quantizer import Quantizer


class FSQ(Quantizer):
    """A `Quantizer` (forward, nearest, lookup, codebook_size, code_dim, sync); under torchrun `sync` makes its one
    data-dependent initialisation see every process."""

    def __init__(self, levels: list[int], code_dim: int):
        super().__init__()
        if not levels or any(int(v) < 2 for v in levels):
            raise ValueError(f"FSQ levels must be integers >= 2, got {levels}")
        self.levels = [int(v) for v in levels]
        self.code_dim = code_dim
        self.codebook_size = math.prod(self.levels)
        d = len(self.levels)
        self.project_in = nn.Linear(code_dim, d)
        self.project_out = nn.Linear(d, code_dim)
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.float32), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + self.levels[:-1], dtype=torch.long), 0)
        self.register_buffer("_basis", basis, persistent=False)
        # each projected number is standardised over the batch before it is bounded (running statistics at inference,
        # like batch norm without its affine part): left free, the encoder's outputs drift to one corner of the grid
        # within a few steps, where tanh saturates and every latent gets the same code (measured: 1 of 128 codes used
        # after 10 steps without it, 123 after 150 steps with it)
        self.register_buffer("running_mean", torch.zeros(d))
        self.register_buffer("running_var", torch.ones(d))
        self.register_buffer("initialized", torch.tensor(False))
        self._needs_init = True

    momentum = 0.01

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "initialized" in state_dict:
            self._needs_init = not bool(state_dict[prefix + "initialized"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def standardise(self, y: torch.Tensor) -> torch.Tensor:
        """y [N, d] -> each column at mean 0, std 1: the batch's statistics in training (with their gradient; per
        process under torchrun, as batch norm under DDP), the running ones (averaged over processes) at inference."""
        if not self.training:
            return (y - self.running_mean) / (self.running_var + 1e-5).sqrt()
        mean, var = y.mean(0), y.var(0, unbiased=False)
        with torch.no_grad():
            stats = torch.stack([mean, var])
            if self.sync is not None:
                stats = self.sync.sum_(stats) / self.sync.world_size
            if self._needs_init:
                self.running_mean.copy_(stats[0])
                self.running_var.copy_(stats[1])
                self.initialized.fill_(True)
                self._needs_init = False
            else:
                self.running_mean.lerp_(stats[0], self.momentum)
                self.running_var.lerp_(stats[1], self.momentum)
        return (y - mean) / (var + 1e-5).sqrt()

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash each number into a range whose rounding gives exactly `levels[i]` integer values, centred on 0
        (for an even count the grid is shifted by a half: 4 levels are -2, -1, 0, 1)."""
        half = (self._levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def grid_values(self, z: torch.Tensor) -> torch.Tensor:
        """Projected latents [..., d] -> rounded grid values in [-1, 1] [..., d], gradient straight through."""
        bounded = self.bound(z)
        rounded = bounded + (bounded.round() - bounded).detach()
        return rounded / (self._levels // 2)

    def values_to_indices(self, values: torch.Tensor) -> torch.Tensor:
        """Grid values in [-1, 1] [..., d] -> code numbers in 0..K-1 [...]."""
        digits = (values * (self._levels // 2) + self._levels // 2).round().long()
        return (digits * self._basis).sum(-1)

    def indices_to_values(self, indices: torch.Tensor) -> torch.Tensor:
        """Code numbers [...] -> grid values in [-1, 1] [..., d]."""
        digits = (indices.long()[..., None] // self._basis) % self._basis.new_tensor(self.levels)
        return (digits - self._levels // 2) / (self._levels // 2)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Code number for each row of flat [N, D]: the grid point its projection rounds to."""
        return self.values_to_indices(self.grid_values(self.standardise(self.project_in(flat.float()))))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] -> latents [B, D, h, w]."""
        return self.project_out(self.indices_to_values(indices)).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantized latents, code numbers [B, h, w], a zero loss: FSQ has no commitment term)."""
        with torch.autocast(z.device.type, enabled=False):
            b, d, h, w = z.shape
            if d != self.code_dim:
                raise ValueError(f"latent has {d} channels, FSQ expects D={self.code_dim}")
            y = self.standardise(self.project_in(z.float().permute(0, 2, 3, 1).reshape(-1, d)))
            values = self.grid_values(y).view(b, h, w, -1)
            indices = self.values_to_indices(values.detach())
            q = self.project_out(values).permute(0, 3, 1, 2).contiguous().to(z.dtype)
            return q, indices, z.new_zeros(())
