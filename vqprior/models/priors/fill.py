"""Filling any set of positions of a code map with a raster-order prior.

A raster prior gives p(rest | first k codes) exactly, so a kept *prefix* is continued by plain ancestral sampling
(`sample(..., keep=k)`), the class drawn from its exact posterior p(c | prefix) when it is inferred; so is a kept
part that is a prefix in another drawing order the prior learned (`orders.py`: the bottom, the left or the right
part), by the network of that order on the map turned around (`continue_prefix`). For any other kept set (the bottom, the left half, everything but an erased stroke) the
conditional p(unknown | kept) is not a product of the prior's factors, but it is proportional to the joint
p(map) = prod_i p(z_i | z_<i), which the prior evaluates in one pass. So it is sampled by Markov chain Monte Carlo:

1. start (sampling importance resampling): `candidates` ancestral drafts of every map by the prior's own cached
   sampler with the kept codes in place (each unknown position drawn from p(z_p | z_<p), each kept position's
   factor p(z_k | z_<k) multiplied into the draft's importance weight; `KeptCodes`), one of them picked with
   probability proportional to its weight. For a conditional prior whose class is inferred, the drafts are drawn
   per class (so the true class always has drafts), weighted by p(c) too, and p(c | kept) ∝ p(c) · the mean weight
   of class c's drafts is the class posterior reported;
2. sweeps: for each unknown position p in turn, propose z_p' ~ p(z_p | z_<p) (the prior's own conditional, which
   does not depend on z_p) and accept with probability min(1, prod_{i>p} p(z_i | z'_<i) / p(z_i | z_<i)): a
   Metropolis-Hastings step whose stationary law is exactly p(unknown | kept). One network pass per proposal.
3. class (conditional prior, class not given): between sweeps the class is redrawn from p(c | map) ∝ p(map | c) p(c)
   (Gibbs), so the chain samples p(class, unknown | kept).

A kind that decodes in parallel (the masked kind) fills the region with its own S-step decoding instead, kept codes
in place: one network pass per step, but not an exact conditional of its raster likelihood. Without a class it
decodes under the null condition and reports p(c | completed map) (exact, by its raster likelihood).

Temperature and guidance change the target to the product of tempered / guided conditionals (the same factors
ancestral sampling draws from), so the drafts' class weights are the guided model's; the Gibbs class step of the
sweeps uses the plain conditional likelihood. Kept codes never
change. Randomness comes from one generator seeded by `seed`: the same inputs and seed give the same completions.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ... import guidance as guidance_values
from ...config import DRAFTS, SWEEPS
from ...guidance import Guidance
from ...reporter import Reporter
from .base import GuidedNoise, GumbelNoise, Prior, guided_logits, sample
from .classes import class_posterior
from .orders import ORDERS, from_order, to_order


def is_prefix(keep: torch.Tensor) -> int | None:
    """k when every map's kept positions [N, H, W] are exactly its first k raster positions (the same k for all),
    else None."""
    flat = keep.flatten(1)
    k = int(flat[0].sum())
    expected = torch.zeros_like(flat[0])
    expected[:k] = True
    return k if bool((flat == expected).all()) else None


def continue_prefix(
    prior: Prior,
    codes: torch.Tensor,
    keep: torch.Tensor,
    samples: int,
    label: int | None,
    log_class_prior: torch.Tensor | None,
    temperature: float,
    guidance: Guidance,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, str] | None:
    """Exact completions of maps codes [N, H, W] whose kept positions keep [N, H, W] are a prefix (the same length
    for all) in the raster order or in another order the prior learned: (codes [N, samples, H, W], posterior [N, C]
    when the class is inferred, labels [N, samples] or None, the order), or None when no learned order has the kept
    part as a prefix."""
    for order in ORDERS:  # raster first: a kept top part is continued by the prior itself
        network = prior.order(order)
        k = None if network is None else is_prefix(to_order(keep, order))
        if k is not None:
            break
    else:
        return None
    turned = to_order(codes, order)
    n, grid = len(turned), tuple(turned.shape[1:])
    posterior, labels = None, None
    gen = torch.Generator().manual_seed(seed)
    if prior.num_classes:
        if label is None:
            posterior = class_posterior(network, turned, log_class_prior.cpu(), k)
            labels = torch.multinomial(posterior, samples, replacement=True, generator=gen)
        else:
            labels = torch.full((n, samples), label, dtype=torch.long)
    prefix = turned.repeat_interleave(samples, 0)
    flat_labels = None if labels is None else labels.reshape(-1)
    out = torch.cat(
        [
            sample(
                network,
                len(prefix[i : i + 1000]),
                grid,
                None if flat_labels is None else flat_labels[i : i + 1000],
                temperature,
                seed,
                first=i,
                prefix=prefix[i : i + 1000],
                keep=k,
                guidance=guidance,
            ).cpu()
            for i in range(0, len(prefix), 1000)
        ]
    )
    return from_order(out.view(n, samples, *grid), order), posterior, labels, order


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
    sweeps: int = SWEEPS,
    seed: int = 0,
    candidates: int = DRAFTS,
    deadline: float | None = None,
    reporter: Reporter = Reporter(),
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Fill the positions of codes [B, H, W] where keep [B, H, W] is False.

    deadline: a time.monotonic() past which the sweeps stop where they are (the chain's state is a valid map, only
    less mixed): how the page bounds the time one request holds the model. reporter: progress of the drafts (a
    line per chunk of DRAFT_CHUNK maps) and of the sweeps.

    labels: long [B] (the class of each map), or None: for a conditional prior the class is then sampled with the
    map (needs log_class_prior [C]). Returns (codes [B, H, W], labels [B] the chain ended on or None,
    posterior [B, C]: p(c | kept) estimated from the drafts, or None when the class was given or the prior has none).
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
        codes, labels, posterior = _resample(
            prior, codes, keep, labels, log_class_prior, temperature, guidance, candidates, seed, gen, reporter
        )
        cond = prior.condition(labels, b) if prior.num_classes else None

        for _ in reporter.track(range(sweeps), sweeps, "completing: MCMC sweeps"):
            if deadline is not None and time.monotonic() > deadline:
                break
            if infer:  # 3. the class given the whole map
                post = class_posterior(prior, codes, log_class_prior.cpu()).float().to(device)
                labels = torch.multinomial(post.cpu(), 1, generator=gen).squeeze(1).to(device)
                cond = prior.condition(labels, b)
            logp = _log_conditionals(prior, codes, cond, temperature, guidance)
            current = logp.gather(1, codes[:, None]).squeeze(1).flatten(1)  # [B, H*W]
            for p in unknown:  # 2. Metropolis-Hastings with the prior's own conditional as the proposal
                if deadline is not None and time.monotonic() > deadline:
                    break
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
        return codes.cpu(), None if labels is None else labels.cpu(), None if posterior is None else posterior.cpu()
    finally:
        prior.train(was_training)


DRAFT_CHUNK = 4000  # maps per call of the cached sampler (its per-column activations grow with the batch)


class KeptCodes:
    """The noise of an ancestral draft with some codes given: at a kept position the sampler gets the kept code
    instead of a draw, and the log-probability the sampler's conditional gives it is added to the draft's weight.
    Drawing the unknown positions from p(z_p | z_<p) and weighting by the kept positions' factors is importance
    sampling of p(unknown | kept) with the prior's own ancestral sampler as the proposal."""

    def __init__(self, noise, codes: torch.Tensor, keep: torch.Tensor):
        self.noise, self.codes, self.keep = noise, codes.flatten(1), keep.flatten(1)
        self.log_weight = torch.zeros(len(codes), dtype=torch.float64, device=codes.device)

    def draw(self, logits: torch.Tensor, temperature: float, position: int | None = None) -> torch.Tensor:
        drawn = self.noise.draw(logits, temperature, position)
        b = len(self.codes)
        mixed = self.noise.mix(logits, position) if isinstance(self.noise, GuidedNoise) else logits
        logp = F.log_softmax(mixed.float() / temperature, 1)
        given, kept = self.codes[:, position], self.keep[:, position]
        self.log_weight += torch.where(kept, logp.gather(1, given[:, None]).squeeze(1), 0).double()
        code = torch.where(kept, given, drawn[:b])
        return torch.cat([code, code]) if len(drawn) == 2 * b else code


def drafts(
    prior, codes, keep, labels, temperature, guidance, seed, reporter: Reporter = Reporter()
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral draft of every map codes [B, H, W] with its kept codes in place, by the prior's own (cached)
    sampler: (drafts [B, H, W], log importance weight [B]: the sum of the kept positions' log factors)."""
    b, grid = len(codes), tuple(codes.shape[1:])
    out, log_weight = [], []
    chunks = range(0, b, DRAFT_CHUNK)
    for first in reporter.track(chunks, len(chunks), f"completing: {b:,} drafts"):
        part, kept = codes[first : first + DRAFT_CHUNK], keep[first : first + DRAFT_CHUNK]
        lab = None if labels is None else labels[first : first + DRAFT_CHUNK]
        cond = prior.condition(lab, len(part)) if prior.num_classes else None
        noise = GumbelNoise(seed, first, len(part), part.device)
        start = torch.where(kept, part, torch.zeros_like(part))
        if cond is not None and not guidance_values.is_plain(guidance):
            cond, start, noise = (
                torch.cat([cond, torch.zeros_like(cond)]),
                torch.cat([start, start]),
                GuidedNoise(noise, guidance, grid),
            )
        given = KeptCodes(noise, part, kept)
        out.append(type(prior).draw(prior, start, cond, 0, temperature, given)[: len(part)])
        log_weight.append(given.log_weight)
    return torch.cat(out), torch.cat(log_weight)


def _resample(prior, codes, keep, labels, log_class_prior, temperature, guidance, candidates, seed, gen, reporter):
    """1. the start: `candidates` drafts of every map (per class, when the class is inferred), one picked with
    probability proportional to its importance weight (sampling importance resampling). Returns (codes [B, H, W],
    labels [B] or None, posterior [B, C]: p(c | kept) ∝ p(c) · mean of the class's draft weights, or None)."""
    b, height, width = codes.shape
    device = codes.device
    infer = bool(prior.num_classes) and labels is None
    classes = prior.num_classes if infer else 1
    per = classes * candidates
    if infer:
        draft_labels = torch.arange(classes, device=device).repeat_interleave(candidates).repeat(b)
    else:
        draft_labels = None if labels is None else labels.to(device).repeat_interleave(per)
    drafted, log_weight = drafts(
        prior,
        codes.repeat_interleave(per, 0),
        keep.repeat_interleave(per, 0),
        draft_labels,
        temperature,
        guidance,
        seed,
        reporter,
    )
    log_weight = log_weight.view(b, classes, candidates)
    posterior = None
    if infer:
        log_weight = log_weight + log_class_prior.double().to(device)[None, :, None]
        posterior = torch.softmax(torch.logsumexp(log_weight, 2), 1).float()
    pick = torch.multinomial(torch.softmax(log_weight.flatten(1), 1).cpu(), 1, generator=gen).squeeze(1).to(device)
    chosen = drafted.view(b, per, height, width)[torch.arange(b, device=device), pick]
    return chosen, (pick // candidates) if infer else labels, posterior


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
