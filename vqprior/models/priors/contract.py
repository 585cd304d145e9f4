"""The prior contract, checked on a random map before stage 3 trains a prior (a built-in or one of the user's)."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import UserError
from .base import GumbelNoise, Prior


def check_prior(prior: nn.Module, target: str, grid: tuple[int, int] = (4, 5)) -> None:
    """The prior contract, probed on a random map: a `Prior`, logits of shape [B, K, H, W], and causality
    (changing the codes at and after position p leaves the logits before and at p unchanged). A kind that decodes in
    parallel must also fill only the unknown positions, with codes in 0..K-1, and draw the same maps from the same seed."""
    if not isinstance(prior, Prior):
        raise UserError(
            f"prior {target!r} is a {type(prior).__name__}; it must subclass vqprior.models.priors.base.Prior"
        )
    k, b = prior.codebook_size, 2
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, k, (b, *grid), generator=gen)
    labels = torch.zeros(b, dtype=torch.long) if prior.num_classes else None
    was_training = prior.training
    prior.eval()
    try:
        with torch.no_grad():
            try:
                logits = prior.logits(codes, prior.condition(labels, b))
            except Exception as e:
                raise UserError(
                    f"prior {target!r} failed on codes [{b}, {grid[0]}, {grid[1]}]: {type(e).__name__}: {e}"
                ) from None
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (b, k, *grid):
                got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise UserError(f"prior {target!r} must return logits [B, K, H, W] = {[b, k, *grid]}, got {got}")
            flat = codes.view(b, -1)
            for p in (0, grid[1] + 1, flat.shape[1] - 1):
                changed = flat.clone()
                changed[:, p:] = torch.randint(0, k, changed[:, p:].shape, generator=gen)
                after = prior.logits(changed.view_as(codes), prior.condition(labels, b)).flatten(2)
                if not torch.allclose(after[:, :, : p + 1], logits.flatten(2)[:, :, : p + 1], atol=1e-5):
                    raise UserError(
                        f"prior {target!r} is not causal: its logits at raster position {p} change with the codes "
                        f"at or after it; a prior may only look at earlier positions"
                    )
            if prior.parallel:
                known = torch.rand(b, *grid, generator=gen) < 0.5
                cond = prior.condition(labels, b)
                filled = [
                    prior.decode(codes.clone(), cond, known, 1.0, GumbelNoise(0, 0, b, codes.device)) for _ in (0, 1)
                ]
                if (
                    not torch.equal(filled[0][known], codes[known])
                    or int(filled[0].min()) < 0
                    or int(filled[0].max()) >= k
                ):
                    raise UserError(
                        f"prior {target!r} decodes in parallel but changed known codes or drew codes outside 0..{k - 1}"
                    )
                if not torch.equal(*filled):
                    raise UserError(
                        f"prior {target!r} decodes in parallel but draws different maps from the same noise"
                    )
    finally:
        prior.train(was_training)
