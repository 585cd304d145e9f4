"""A quantizer that is not part of vqprior, for the registry test: K fixed random codes, nearest by distance, the
gradient passed straight through. What a new built-in quantizer is: a module like this plus one registry line."""

import torch
import torch.nn.functional as F

from vqprior.models.quantizer import Quantizer


class FixedCodebook(Quantizer):
    def __init__(self, codebook_size: int, code_dim: int, seed: int = 0):
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("codebook", torch.randn(codebook_size, code_dim, generator=generator))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.cdist(flat.float(), self.codebook).argmin(1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, d, h, w = z.shape
        indices = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)
        q = self.lookup(indices).to(z.dtype)
        return z + (q - z).detach(), indices, F.mse_loss(z, q.detach())


class NotAQuantizer(torch.nn.Module):
    def __init__(self, code_dim: int):
        super().__init__()
