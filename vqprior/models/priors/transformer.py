"""A causal transformer over the raster sequence of codes (the VQGAN / taming-transformers recipe), with an exact
KV-cache sampler.

Position p of the sequence predicts code p from the codes before it: its input is the embedding of code p-1 (a
learned start vector at p = 0) plus learned row and column embeddings of p's place in the map, plus the class
vector through a linear map (so the all-zero null class of classifier-free guidance and soft-label mixes work
as for the other kinds). Pre-norm blocks of causal self-attention (torch's scaled_dot_product_attention: flash
kernels on CUDA) and an MLP, then a final norm and a linear head. The first rows of a map alone are a valid
shorter sequence, as the prior contract needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import GumbelNoise, Prior


def check_size(width: int, depth: int, heads: int, dropout: float) -> None:
    """A transformer prior's size, checked where it is built (one line a user can act on)."""
    if width < 1 or depth < 1 or heads < 1 or width % heads:
        raise ValueError(
            f"width must be a positive multiple of heads and depth >= 1, got width {width}, heads {heads}, depth {depth}"
        )
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, causal: bool = True):
        super().__init__()
        self.heads, self.dropout, self.causal = heads, dropout, causal
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, L, width] -> q, k, v as [B, heads, L, width / heads]."""
        b, n, w = x.shape
        return self.qkv(self.norm1(x)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4).unbind(0)

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The block's output from its input and the attention result [B, heads, L, width / heads]."""
        b, _, n, _ = attended.shape
        x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(b, n, -1)))
        return x + self.drop(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(x)
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.finish(x, attended)


class TransformerPrior(Prior):
    """p(codes) = prod over raster positions of p(code_p | codes before p [, class]) with causal self-attention."""

    def __init__(
        self,
        codebook_size: int,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
        num_classes: int = 0,
        max_rows: int = 64,
        max_cols: int = 64,
    ):
        super().__init__()
        check_size(width, depth, heads, dropout)
        self.codebook_size, self.num_classes = codebook_size, num_classes
        self.embed = nn.Embedding(codebook_size, width)
        self.start = nn.Parameter(torch.zeros(width))
        self.rows, self.cols = nn.Embedding(max_rows, width), nn.Embedding(max_cols, width)
        self.cond = nn.Linear(num_classes, width, bias=False) if num_classes else None
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, codebook_size)
        for emb in (self.embed, self.rows, self.cols):
            nn.init.normal_(emb.weight, std=0.02)

    def position(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Row + column embeddings of the raster positions of a height x width map: [height * width, width]."""
        if height > self.rows.num_embeddings or width > self.cols.num_embeddings:
            raise ValueError(
                f"a {height}x{width} map is larger than this prior's position tables "
                f"({self.rows.num_embeddings}x{self.cols.num_embeddings}); raise max_rows/max_cols"
            )
        r = torch.arange(height, device=device).repeat_interleave(width)
        c = torch.arange(width, device=device).repeat(height)
        return self.rows(r) + self.cols(c)

    def inputs(self, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """codes [B, H, W] -> the sequence's inputs [B, H*W, width]: position p holds code p-1 (the start vector at 0)."""
        b, height, width = codes.shape
        previous = self.embed(codes.reshape(b, -1)[:, :-1])
        x = torch.cat([self.start.expand(b, 1, -1), previous], 1) + self.position(height, width, codes.device)
        if self.cond is not None and cond is not None:
            x = x + self.cond(cond)[:, None, :]
        return x

    def logits(self, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        b, height, width = codes.shape
        x = self.inputs(codes, cond)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)).transpose(1, 2).reshape(b, self.codebook_size, height, width)

    @torch.no_grad()
    def draw(
        self, codes: torch.Tensor, cond: torch.Tensor | None, start: int, temperature: float, noise: GumbelNoise
    ) -> torch.Tensor:
        """The exact incremental sampler: one new position per step through every block, attending to cached keys
        and values of the earlier positions; the same noise, in the same order, as the naive sampler."""
        b, height, width = codes.shape
        length = height * width
        flat = codes.view(b, length)
        pos = self.position(height, width, codes.device)
        bias = self.cond(cond) if self.cond is not None and cond is not None else None
        w = self.embed.embedding_dim
        keys = [
            torch.empty(b, blk.heads, length, w // blk.heads, device=codes.device, dtype=pos.dtype)
            for blk in self.blocks
        ]
        values = [torch.empty_like(k) for k in keys]
        for p in range(length):
            x = (self.start.expand(b, -1) if p == 0 else self.embed(flat[:, p - 1])) + pos[p]
            if bias is not None:
                x = x + bias
            x = x[:, None, :]
            for blk, k_cache, v_cache in zip(self.blocks, keys, values):
                q, k, v = blk.split(x)
                k_cache[:, :, p : p + 1], v_cache[:, :, p : p + 1] = k, v
                scores = (q @ k_cache[:, :, : p + 1].transpose(-1, -2)) * (q.shape[-1] ** -0.5)
                x = blk.finish(x, scores.softmax(-1) @ v_cache[:, :, : p + 1])
            if p >= start:
                flat[:, p] = noise.draw(self.head(self.norm(x[:, 0])), temperature, p)
        return codes
