"""A masked bidirectional transformer over code maps (the MaskGIT recipe): `prior.kind = "masked"`.

Training: each map hides a random share of its codes behind a mask token (the share drawn from MaskGIT's cosine
schedule, at least one code) and the network predicts the hidden codes from all the visible ones, in any place of
the map; the loss is the cross-entropy on the hidden codes only.

Sampling (`decode`, the kind's "cached" sampler): start with every unknown code hidden; in each of S steps
(`decode_steps`) predict
all hidden codes at once, draw each from its (tempered, guided) distribution, and keep the most confident ones:
after step s, n * cos(pi/2 * s/S) of a map's n unknown codes stay hidden (MaskGIT's schedule), confidence being a
drawn code's log-probability plus Gumbel noise annealed to zero (`choice_temperature`). Known codes (a kept prefix
or any kept region) never change, so the same routine completes any region of a map.

Likelihood: the network also defines an exact raster-order model, p(z) = prod_p p(z_p | z_<p) where each factor
is the network's prediction at p with p and everything after it hidden (an any-order autoregressive view of a
masked model). `logits` returns those factors (one network pass per position, batched), so `log_prob`, `score`,
`classify`, the bits/dim bound and the MCMC filler stay exact for *that* model. The S-step sampler draws from a
different, unnamed distribution; its samples are judged by `vqprior eval`'s feature spaces, not by a likelihood.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Prior
from .transformer import Block, check_size

MAX_SEQUENCES = 2048  # sequences per network pass when `logits` expands maps into one sequence per position


class MaskedPrior(Prior):
    """p(hidden codes | visible codes [, class]) with bidirectional self-attention; exact raster likelihood."""

    parallel = True

    def __init__(
        self,
        codebook_size: int,
        grid: tuple[int, int] | list[int] = (7, 7),
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
        decode_steps: int = 8,
        choice_temperature: float = 4.5,
        num_classes: int = 0,
    ):
        super().__init__()
        check_size(width, depth, heads, dropout)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"grid must be [rows, columns] of the code maps, got {grid}")
        if not 1 <= decode_steps <= 4096 or choice_temperature < 0:
            raise ValueError(
                f"decode_steps must be in 1..4096 and choice_temperature >= 0, got {decode_steps}, {choice_temperature}"
            )
        self.codebook_size, self.num_classes = codebook_size, num_classes
        self.grid = (int(grid[0]), int(grid[1]))
        self.decode_steps, self.choice_temperature = int(decode_steps), float(choice_temperature)
        self.mask_token = codebook_size  # the embedding row of a hidden code
        self.embed = nn.Embedding(codebook_size + 1, width)
        self.position = nn.Parameter(torch.zeros(self.grid[0] * self.grid[1], width))
        self.cond = nn.Linear(num_classes, width, bias=False) if num_classes else None
        self.blocks = nn.ModuleList(Block(width, heads, dropout, causal=False) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, codebook_size)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)

    # ------------------------------------------------------------------ the network
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, H, W] (codes, or `mask_token` where hidden) -> logits [B, K, H, W] at every position.
        This is what stage 3 trains (through DDP when there are several processes); labels as `condition` takes."""
        return self.masked_logits(tokens, self.condition(labels, tokens.shape[0], check=False))

    def masked_logits(self, tokens: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        b, height, width = tokens.shape
        if (height, width) != self.grid:
            raise ValueError(f"this masked prior models {self.grid[0]}x{self.grid[1]} maps, got {height}x{width}")
        x = self.embed(tokens.reshape(b, -1)) + self.position
        if self.cond is not None and cond is not None:
            x = x + self.cond(cond)[:, None, :]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)).transpose(1, 2).reshape(b, self.codebook_size, height, width)

    def training_loss(self, forward, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy on a random cosine-scheduled share of hidden codes (the visible ones are given)."""
        b = codes.shape[0]
        length = codes[0].numel()
        share = torch.cos(0.5 * math.pi * torch.rand(b, 1, device=codes.device))
        hidden_count = (share * length).ceil().clamp(min=1)
        rank = torch.rand(b, length, device=codes.device).argsort(1).argsort(1)
        hidden = (rank < hidden_count).view_as(codes)
        logits = forward(torch.where(hidden, self.mask_token, codes), cond).float()
        loss = F.cross_entropy(logits, codes, reduction="none")
        return (loss * hidden).sum() / hidden.sum()

    # ------------------------------------------------------------------ the raster contract
    def logits(self, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Raster factors: at p, the network's logits with p and every later position hidden. codes may be the
        first rows of a map (the rest counts as hidden), as the prior contract asks."""
        b, rows, width = codes.shape
        if width != self.grid[1] or rows > self.grid[0]:
            raise ValueError(f"this masked prior models {self.grid[0]}x{self.grid[1]} maps, got {rows}x{width}")
        length, given = self.grid[0] * self.grid[1], rows * width
        full = torch.full((b, length), self.mask_token, dtype=torch.long, device=codes.device)
        full[:, :given] = codes.reshape(b, -1)
        position = torch.arange(length, device=codes.device)
        visible = position[None, :] < position[:given, None]  # [given, length]: copy p sees positions < p
        out = []
        per_chunk = max(1, MAX_SEQUENCES // given)
        for start in range(0, b, per_chunk):
            part = full[start : start + per_chunk]
            n = len(part)
            tokens = torch.where(visible[None], part[:, None, :], self.mask_token).view(n * given, *self.grid)
            part_cond = None if cond is None else cond[start : start + per_chunk].repeat_interleave(given, 0)
            logits = self.masked_logits(tokens, part_cond).flatten(2).view(n, given, self.codebook_size, length)
            out.append(logits[:, position[:given], :, position[:given]].permute(1, 2, 0))  # [n, K, given]
        return torch.cat(out).view(b, self.codebook_size, rows, width)

    # ------------------------------------------------------------------ parallel decoding
    @torch.no_grad()
    def decode(
        self,
        codes: torch.Tensor,
        cond: torch.Tensor | None,
        known: torch.Tensor,
        temperature: float,
        noise,
        steps: int | None = None,
    ) -> torch.Tensor:
        """Fill codes [B, H, W] where known [B, H, W] is False in `steps` confidence-ordered parallel steps
        (default: decode_steps, the number saved with the network).
        All randomness comes from `noise` (per map, per step), so a map's codes do not depend on the batch size."""
        steps = self.decode_steps if steps is None else steps
        b = codes.shape[0]
        tokens = torch.where(known, codes, self.mask_token).view(b, -1)
        unknown = (~known).view(b, -1).sum(1)
        length = tokens.shape[1]
        for s in range(1, steps + 1):
            hidden = tokens == self.mask_token
            stay_hidden = (unknown * math.cos(0.5 * math.pi * s / steps)).floor().long() if s < steps else 0 * unknown
            reveal = hidden.sum(1) - stay_hidden  # how many to fix in this step, per map
            if not bool((reveal > 0).any()):  # the schedule fixes nothing now: skip the pass, use up its noise
                noise.gumbel(self.codebook_size, length, dtype=torch.float32, device=codes.device)
                noise.gumbel(length, dtype=torch.float32, device=codes.device)
                continue
            logits = noise.guide(self.masked_logits(tokens.view_as(codes), cond).flatten(2).float())
            drawn = noise.draw(logits, temperature)  # [B, L]
            logp = F.log_softmax(logits / temperature, 1).gather(1, drawn[:, None]).squeeze(1)
            anneal = self.choice_temperature * (1 - s / steps)
            confidence = logp + anneal * noise.gumbel(length, dtype=logp.dtype, device=logp.device)
            confidence = confidence.masked_fill(~hidden, -math.inf)
            order = confidence.argsort(dim=1, descending=True, stable=True)
            rank = torch.empty_like(order).scatter_(
                1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
            )
            chosen = (rank < reveal[:, None]) & hidden
            tokens = torch.where(chosen, drawn, tokens)
        return tokens.view_as(codes)
