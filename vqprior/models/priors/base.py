"""The prior interface: what stages 3 and 4, evaluation, completion and scoring need from any prior.

A prior models code maps [B, H, W] (ints in 0..K-1) autoregressively in raster order, optionally given a
class (int labels [B]) or a soft class mix (weights [B, num_classes]). An implementation subclasses
`Prior` and provides `logits(codes, cond)`; it may override `draw` with a faster exact sampler.

Sampling draws position p as argmax(logits_p / T + Gumbel noise). The noise comes from `GumbelNoise`:
one generator per block of SEED_BLOCK maps, seeded from (seed, block index), so a map's noise depends
only on the seed and its index, not on the batch size or on how many processes share the work; every
sampler takes the noise in the same order, so an incremental sampler returns exactly the naive one's maps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ... import guidance as guidance_values

SEED_BLOCK = 50  # maps per noise generator; batches of maps are cut at multiples of this


class Prior(nn.Module):
    """p(codes | class) = prod over raster positions p of p(code_p | codes before p, class)."""

    codebook_size: int
    num_classes: int  # 0 = unconditional
    # False: `draw` fills positions one at a time in raster order. True: the kind also decodes whole maps (or any
    # unknown region) in a few parallel steps, `decode(codes, cond, known, temperature, noise, steps)` (the masked kind)
    parallel: bool = False

    def logits(self, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """codes [B, H, W] long, cond [B, num_classes] float or None -> logits [B, K, H, W].
        Must be causal: logits at p may depend only on codes before p. It must also work on the first rows
        of a map alone (codes [B, i+1, W]); the reference sampler relies on that."""
        raise NotImplementedError

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(codes, self.condition(labels, codes.shape[0]))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def condition(self, labels: torch.Tensor | None, batch: int, check: bool = True) -> torch.Tensor | None:
        """Class labels [B] (int) or class weights [B, num_classes] (float, soft labels) -> conditioning [B, num_classes].
        check=False skips the range check of int labels, which reads them back from the device: for training steps
        over labels that were checked once when they were loaded."""
        if not self.num_classes:
            if labels is not None:
                raise ValueError("this prior is unconditional; do not pass labels")
            return None
        if labels is None:
            raise ValueError(f"this prior is class-conditional: pass labels in [0, {self.num_classes})")
        dtype = next(self.parameters()).dtype
        labels = labels.to(self.device)
        if not labels.is_floating_point():
            if labels.shape != (batch,):
                raise ValueError(f"expected {batch} labels, got shape {list(labels.shape)}")
            if check and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(
                    f"labels must be in [0, {self.num_classes}), got {labels.min().item()}..{labels.max().item()}"
                )
            return F.one_hot(labels.long(), self.num_classes).to(dtype)
        if labels.shape != (batch, self.num_classes):
            raise ValueError(f"soft labels must have shape [{batch}, {self.num_classes}], got {list(labels.shape)}")
        return labels.to(dtype)

    def order(self, name: str) -> "Prior | None":
        """The network that draws maps in another order (models/priors/orders.py: reverse, transpose, ...), when
        this prior learned one; the raster order is the prior itself. Completion asks for the order in which a kept
        part is a prefix."""
        return self if name == "raster" else None

    def log_prob(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log-likelihood of each map in nats: [B]."""
        logits = self.logits(codes, self.condition(labels, codes.shape[0]))
        return -F.cross_entropy(logits, codes, reduction="none").flatten(1).sum(1)

    def training_loss(self, forward, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Stage 3's objective for one batch: the mean negative log-likelihood per code. `forward` is the prior itself
        or its DDP wrapper (called once, so gradients are synchronised); cond is the (possibly dropped) class vector."""
        return F.cross_entropy(forward(codes, cond).float(), codes)

    def draw(
        self, codes: torch.Tensor, cond: torch.Tensor | None, start: int, temperature: float, noise: "GumbelNoise"
    ) -> torch.Tensor:
        """Fill codes [B, H, W] in raster order from position `start` on (earlier positions are given).
        This is the naive reference: the network is re-run for every position, on the rows up to it."""
        height, width = codes.shape[1:]
        for p in range(start, height * width):
            i, j = divmod(p, width)
            codes[:, i, j] = noise.draw(self.logits(codes[:, : i + 1], cond)[:, :, i, j], temperature, p)
        return codes


class GumbelNoise:
    """Gumbel noise for maps [first, first + count) of a sampling job with one seed."""

    def __init__(self, seed: int, first: int, count: int, device: torch.device):
        if first % SEED_BLOCK:
            raise ValueError(f"a batch of maps must start at a multiple of {SEED_BLOCK}, got {first}")
        self.generators, self.sizes = [], []
        for start in range(first, first + count, SEED_BLOCK):
            state = np.random.SeedSequence([seed, start // SEED_BLOCK]).generate_state(2, np.uint32)
            g = torch.Generator(device=device)
            g.manual_seed(int(state[0]) << 32 | int(state[1]))
            self.generators.append(g)
            self.sizes.append(min(SEED_BLOCK, first + count - start))

    def gumbel(self, *shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Standard Gumbel noise [B, *shape]: each map's rows from its own block's generator."""
        u = torch.cat(
            [
                torch.rand(n, *shape, generator=g, device=device, dtype=dtype)
                for g, n in zip(self.generators, self.sizes)
            ]
        )
        return u.clamp_(min=torch.finfo(u.dtype).tiny).log_().neg_().log_().neg_()

    def draw(self, logits: torch.Tensor, temperature: float, position: int | None = None) -> torch.Tensor:
        """Codes [B, ...] = argmax(logits / T + Gumbel) over dim 1 for logits [B, K, ...]. `position` (the raster
        position drawn, when logits [B, K] are one position's) matters only to a guidance ramp."""
        gumbel = self.gumbel(*logits.shape[1:], dtype=logits.dtype, device=logits.device)
        scaled = logits if temperature == 1.0 else logits / temperature
        return gumbel.add_(scaled).argmax(1)

    def guide(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits a code is drawn from (GuidedNoise mixes its two halves here)."""
        return logits


class GuidedNoise:
    """Classifier-free guidance on top of GumbelNoise: the sampler runs a doubled batch (rows with the class,
    then the same rows with the null condition), and each position is drawn once from
    uncond + scale * (cond - uncond) and written to both halves. The scale is one number, or a ramp over the raster
    positions of the grid (`vqprior.guidance`): then a sampler that draws one position passes its `position`, and
    logits of whole maps ([B, K, H, W] or [B, K, H * W]) get each position's scale."""

    def __init__(self, noise: GumbelNoise, guidance, grid: tuple[int, int]):
        self.noise, self.guidance, self.grid = noise, guidance, tuple(grid)

    def mix(self, logits: torch.Tensor, position: int | None = None) -> torch.Tensor:
        return guided_logits(logits, self.guidance, self.grid, position)

    def draw(self, logits: torch.Tensor, temperature: float, position: int | None = None) -> torch.Tensor:
        code = self.noise.draw(self.mix(logits, position), temperature)
        return torch.cat([code, code])

    def gumbel(self, *shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        g = self.noise.gumbel(*shape, dtype=dtype, device=device)
        return torch.cat([g, g])

    def guide(self, logits: torch.Tensor) -> torch.Tensor:
        guided = self.mix(logits)
        return torch.cat([guided, guided])


def guided_logits(logits: torch.Tensor, guidance, grid: tuple[int, int], position: int | None = None) -> torch.Tensor:
    """uncond + scale * (cond - uncond) from a doubled batch's two halves (with the class, then without): [B, K, ...].
    A ramp's scale depends on the raster position: `position` for one position's logits [2B, K]; logits of whole
    maps ([2B, K, H, W], their first rows, or [2B, K, H * W]) get each position's own."""
    cond, uncond = logits.chunk(2)
    return uncond + _scale(logits, guidance, tuple(grid), position) * (cond - uncond)


def _scale(logits: torch.Tensor, guidance, grid: tuple[int, int], position: int | None):
    positions = grid[0] * grid[1]
    if guidance_values.is_constant(guidance):
        return guidance_values.ends(guidance)[0]
    if position is not None:
        return guidance_values.scale_at(guidance, position, positions)
    s = torch.tensor(guidance_values.scales(guidance, positions), dtype=logits.dtype, device=logits.device)
    if logits.dim() >= 4 and logits.shape[-1] == grid[1] and logits.shape[-2] <= grid[0]:
        return s.view(grid)[: logits.shape[-2]]  # whole maps, or their first rows
    if logits.dim() >= 3 and logits.shape[-1] == positions:
        return s
    raise ValueError(
        "this prior's sampler does not say which position it draws, so a guidance ramp cannot be applied; "
        "use one guidance number"
    )


@torch.no_grad()
def sample(
    prior: Prior,
    count: int,
    grid: tuple[int, int],
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    method: str = "cached",
    first: int = 0,
    prefix: torch.Tensor | None = None,
    keep: int = 0,
    guidance: float | tuple[float, float] = 1.0,
    decode_steps: int | None = None,
) -> torch.Tensor:
    """Draw `count` code maps [count, H, W] (maps first..first+count-1 of the job with this seed).

    labels: int [count], soft class weights [count, num_classes], or None (unconditional prior).
    prefix/keep: continue maps whose first `keep` raster positions are given in prefix [count, H, W].
    method: "cached" uses the prior's own exact incremental sampler; "naive" the reference above.
    guidance: classifier-free guidance scale for a conditional prior trained with label dropout
    (1 = plain conditional sampling; the null condition is the all-zero class vector), or a ramp (first, last)
    over the raster positions (`vqprior.guidance`).
    decode_steps: parallel decoding steps for a kind that decodes in parallel (None: its own default); with method
    "naive" such a kind draws one position at a time in raster order from its exact raster likelihood instead.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    guidance = guidance_values.check(guidance)
    if method not in ("cached", "naive"):
        raise ValueError(f"unknown sampler {method!r}; choose cached or naive")
    check_decode_steps(prior, decode_steps)
    height, width = grid
    if not 0 <= keep <= height * width:
        raise ValueError(f"keep must be in 0..{height * width}, got {keep}")
    device = prior.device
    cond = prior.condition(labels, count)
    codes = torch.zeros(count, height, width, dtype=torch.long, device=device)
    if keep:
        if prefix is None or tuple(prefix.shape) != (count, height, width):
            raise ValueError(f"keep={keep} needs prefix codes of shape [{count}, {height}, {width}]")
        codes.view(count, -1)[:, :keep] = prefix.to(device).view(count, -1)[:, :keep]
    noise = GumbelNoise(seed, first, count, device)
    if not guidance_values.is_plain(guidance) and cond is not None:
        cond, codes, noise = (
            torch.cat([cond, torch.zeros_like(cond)]),
            torch.cat([codes, codes]),
            GuidedNoise(noise, guidance, grid),
        )
    was_training = prior.training
    prior.eval()
    try:
        if prior.parallel and method == "cached":
            known = torch.zeros(codes.shape, dtype=torch.bool, device=device)
            known.view(len(codes), -1)[:, :keep] = True
            return prior.decode(codes, cond, known, temperature, noise, decode_steps)[:count]
        drawer = Prior.draw if method == "naive" else type(prior).draw
        return drawer(prior, codes, cond, keep, temperature, noise)[:count]
    finally:
        prior.train(was_training)


def generate(
    prior: Prior,
    count: int,
    grid: tuple[int, int],
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 1000,
    method: str = "cached",
    track=None,
    guidance: float | tuple[float, float] = 1.0,
    first: int = 0,
    decode_steps: int | None = None,
) -> torch.Tensor:
    """Maps first..first+count-1 of the job with this seed [count, H, W], on the CPU, in batches; map n always
    gets the same noise (seed, n), whatever the batch size. `track(iterable, total, description)` may wrap the
    batches (a progress bar)."""
    batch = -(-batch_size // SEED_BLOCK) * SEED_BLOCK
    starts = range(first, first + count, batch)
    chunks = []
    for start in track(starts, len(starts), "sampling") if track else starts:
        stop = min(first + count, start + batch)
        chunk_labels = None if labels is None else labels[start - first : stop - first]
        chunks.append(
            sample(
                prior,
                stop - start,
                grid,
                chunk_labels,
                temperature,
                seed,
                method,
                first=start,
                guidance=guidance,
                decode_steps=decode_steps,
            ).cpu()
        )
    return torch.cat(chunks)


def check_decode_steps(prior: Prior, steps: int | None) -> None:
    """decode_steps is None, or a number of parallel decoding steps for a kind that decodes in parallel."""
    if steps is None:
        return
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= 4096:
        raise ValueError(f"decode_steps must be an integer in 1..4096, got {steps!r}")
    if not prior.parallel:
        raise ValueError(
            f"decode_steps applies to a prior that decodes in parallel (prior.kind = 'masked'); this one "
            f"({type(prior).__name__}) draws one code at a time"
        )
