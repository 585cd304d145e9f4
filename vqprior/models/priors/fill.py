"""Filling any set of positions of a code map with a raster-order prior.

A raster prior gives p(rest | first k codes) exactly, so a kept *prefix* is continued by plain ancestral sampling
(`sample(..., keep=k)`). For any other kept set (the bottom, the left half, everything but an erased stroke) the
conditional p(unknown | kept) is not a product of the prior's factors, but it is proportional to the joint
p(map) = prod_i p(z_i | z_<i), which the prior evaluates in one pass. So it is sampled by Markov chain Monte Carlo:

1. start: `candidates` ancestral drafts per map (raster order, each unknown position drawn from p(z_p | z_<p) with
   the kept codes in place), one of them picked with probability proportional to the product of the *kept*
   positions' factors p(z_k | z_<k): the importance weight of a draft against the exact conditional (sampling
   importance resampling), so the chain starts from a draft that agrees with the later kept codes;
2. sweeps: for each unknown position p in turn, propose z_p' ~ p(z_p | z_<p) (the prior's own conditional, which
   does not depend on z_p) and accept with probability min(1, prod_{i>p} p(z_i | z'_<i) / p(z_i | z_<i)): a
   Metropolis-Hastings step whose stationary law is exactly p(unknown | kept). One network pass per proposal.
3. class (conditional prior, class not given): between sweeps the class is redrawn from p(c | map) ∝ p(map | c) p(c)
   (Gibbs), so the chain samples p(class, unknown | kept); the class posterior it reports is the average of
   p(c | map) over the chain's states.

A kind that decodes in parallel (the masked kind) fills the region with its own S-step decoding instead, kept codes
in place: one network pass per step, but not an exact conditional of its raster likelihood. Without a class it
decodes under the null condition and reports p(c | completed map) (exact, by its raster likelihood).

Temperature and guidance change the target to the product of tempered / guided conditionals (the same factors
ancestral sampling draws from); the class step always uses the plain conditional likelihood. Kept codes never
change. Randomness comes from one generator seeded by `seed`: the same inputs and seed give the same completions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import guidance as guidance_values
from ...guidance import Guidance
from .base import GuidedNoise, GumbelNoise, Prior, guided_logits
from .classes import class_posterior


def is_prefix(keep: torch.Tensor) -> int | None:
    """k when every map's kept positions [N, H, W] are exactly its first k raster positions (the same k for all),
    else None."""
    flat = keep.flatten(1)
    k = int(flat[0].sum())
    expected = torch.zeros_like(flat[0])
    expected[:k] = True
    return k if bool((flat == expected).all()) else None


def _log_conditionals(
    prior: Prior,
    codes: torch.Tensor,
    cond: torch.Tensor | None,
    temperature: float,
    guidance: Guidance,
    grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """log p(z_i = k | z_<i) for every position and code: [B, K, H, W] (tempered, guided when asked). codes may be
    the first rows of maps on `grid` (a guidance ramp runs over the whole grid's positions)."""
    if cond is not None and not guidance_values.is_plain(guidance):
        both = prior.logits(torch.cat([codes, codes]), torch.cat([cond, torch.zeros_like(cond)]))
        logits = guided_logits(both, guidance, grid or codes.shape[1:])
    else:
        logits = prior.logits(codes, cond)
    return F.log_softmax(logits.float() / temperature, 1)


def _gumbel_draw(logp: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(logp.shape, generator=generator, dtype=torch.float32).to(logp.device)
    return (logp - u.clamp_min(torch.finfo(u.dtype).tiny).log().neg().log()).argmax(1)


@torch.no_grad()
def fill(
    prior: Prior,
    codes: torch.Tensor,
    keep: torch.Tensor,
    labels: torch.Tensor | None,
    log_class_prior: torch.Tensor | None = None,
    temperature: float = 1.0,
    guidance: Guidance = 1.0,
    sweeps: int = 2,
    seed: int = 0,
    candidates: int = 16,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Fill the positions of codes [B, H, W] where keep [B, H, W] is False.

    labels: long [B] (the class of each map), or None: for a conditional prior the class is then sampled with the
    map (needs log_class_prior [C]). Returns (codes [B, H, W], labels [B] the chain ended on or None,
    posterior [B, C]: the chain's average of p(c | map), or None when the class was given or the prior has none).
    """
    device = prior.device
    was_training = prior.training
    prior.eval()
    try:
        gen = torch.Generator().manual_seed(seed)
        keep = keep.to(device).bool()
        codes = torch.where(keep, codes.to(device).long(), torch.zeros((), dtype=torch.long, device=device))
        b, height, width = codes.shape
        if prior.parallel:
            return _decode_region(prior, codes, keep, labels, log_class_prior, temperature, guidance, seed)
        unknown = [p for p in range(height * width) if not bool(keep.flatten(1)[:, p].all())]
        infer = bool(prior.num_classes) and labels is None
        posterior_sum = None
        if infer:
            # start from the null condition (classifier-free guidance trains it); the class follows from the map
            cond = torch.zeros(b, prior.num_classes, device=device, dtype=next(prior.parameters()).dtype)
            start_guidance = 1.0
        else:
            cond = prior.condition(labels, b) if prior.num_classes else None
            start_guidance = guidance

        codes = _start(prior, codes, keep, cond, unknown, temperature, start_guidance, candidates, gen)

        for _ in range(sweeps):
            if infer:  # 3. the class given the whole map
                post = class_posterior(prior, codes, log_class_prior.cpu()).float().to(device)
                posterior_sum = post if posterior_sum is None else posterior_sum + post
                labels = torch.multinomial(post.cpu(), 1, generator=gen).squeeze(1).to(device)
                cond = prior.condition(labels, b)
            logp = _log_conditionals(prior, codes, cond, temperature, guidance)
            current = logp.gather(1, codes[:, None]).squeeze(1).flatten(1)  # [B, H*W]
            for p in unknown:  # 2. Metropolis-Hastings with the prior's own conditional as the proposal
                i, j = divmod(p, width)
                proposal = codes.clone()
                proposal[:, i, j] = _gumbel_draw(logp[:, :, i, j], gen)
                logp_new = _log_conditionals(prior, proposal, cond, temperature, guidance)
                new = logp_new.gather(1, proposal[:, None]).squeeze(1).flatten(1)
                log_ratio = (new[:, p + 1 :] - current[:, p + 1 :]).sum(1)
                u = torch.rand(b, generator=gen, dtype=torch.float64).to(device)
                accept = (u.log() < log_ratio.double()) & ~keep[:, i, j]
                codes = torch.where(accept[:, None, None], proposal, codes)
                current = torch.where(accept[:, None], new, current)
                logp = torch.where(accept[:, None, None, None], logp_new, logp)
        posterior = None
        if infer:
            post = class_posterior(prior, codes, log_class_prior.cpu()).float().to(device)
            posterior_sum = post if posterior_sum is None else posterior_sum + post
            posterior = (posterior_sum / (sweeps + 1)).cpu()
        return codes.cpu(), None if labels is None else labels.cpu(), posterior
    finally:
        prior.train(was_training)


def _start(prior, codes, keep, cond, unknown, temperature, guidance, candidates, gen):
    """1. the chain's start: `candidates` ancestral drafts per map, one resampled by the kept codes' likelihood."""
    b, height, width = codes.shape
    drafts = codes.repeat_interleave(candidates, 0)
    kept = keep.repeat_interleave(candidates, 0)
    draft_cond = None if cond is None else cond.repeat_interleave(candidates, 0)
    for p in unknown:
        i, j = divmod(p, width)
        logp = _log_conditionals(prior, drafts[:, : i + 1], draft_cond, temperature, guidance, (height, width))
        logp = logp[:, :, i, j]
        drafts[:, i, j] = torch.where(kept[:, i, j], drafts[:, i, j], _gumbel_draw(logp, gen))
    if candidates == 1:
        return drafts
    logp = _log_conditionals(prior, drafts, draft_cond, temperature, guidance)
    factors = logp.gather(1, drafts[:, None]).squeeze(1)  # [B * candidates, H, W]
    weight = (factors * kept).flatten(1).sum(1).view(b, candidates).double()
    pick = torch.multinomial(torch.softmax(weight, 1).cpu(), 1, generator=gen).squeeze(1).to(codes.device)
    return drafts.view(b, candidates, height, width)[torch.arange(b, device=codes.device), pick]


def _decode_region(prior, codes, keep, labels, log_class_prior, temperature, guidance, seed):
    """fill() for a kind that decodes in parallel: its S-step decoding with the kept codes in place."""
    b, device = len(codes), codes.device
    infer = bool(prior.num_classes) and labels is None
    if infer:
        cond = torch.zeros(b, prior.num_classes, device=device, dtype=next(prior.parameters()).dtype)
    else:
        cond = prior.condition(labels, b) if prior.num_classes else None
    noise = GumbelNoise(seed, 0, b, device)
    known = keep
    if cond is not None and not guidance_values.is_plain(guidance) and not infer:
        cond, codes, known, noise = (
            torch.cat([cond, torch.zeros_like(cond)]),
            torch.cat([codes, codes]),
            torch.cat([keep, keep]),
            GuidedNoise(noise, guidance, codes.shape[1:]),
        )
    filled = prior.decode(codes, cond, known, temperature, noise)[:b]
    posterior = None
    if infer:
        posterior = class_posterior(prior, filled, log_class_prior.cpu()).float().to(device)
        gen = torch.Generator().manual_seed(seed)
        labels = torch.multinomial(posterior.cpu(), 1, generator=gen).squeeze(1)
        posterior = posterior.cpu()
    return filled.cpu(), None if labels is None else labels.cpu(), posterior
