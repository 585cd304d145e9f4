"""The prior as a model of each class: log p(codes | c) for every class, and Bayes' posterior p(c | codes). Used by
scoring, classification and the completion of a map whose class is inferred."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 500  # maps per pass


@torch.no_grad()
def class_log_likelihoods(prior, codes: torch.Tensor, positions: int | None = None) -> torch.Tensor:
    """log p(the first `positions` raster codes | class) in nats, for every class: [N, classes] ([N, 1] when
    unconditional). One teacher-forced pass per class; causality makes later codes irrelevant."""
    device = next(prior.parameters()).device
    codes = torch.as_tensor(codes).long().to(device)
    positions = codes.shape[1] * codes.shape[2] if positions is None else positions
    classes = range(prior.num_classes) if prior.num_classes else [None]
    out = torch.empty(len(codes), len(classes), dtype=torch.float64)
    was_training = prior.training
    prior.eval()
    for i in range(0, len(codes), CHUNK):
        chunk = codes[i : i + CHUNK]
        for c_idx, c in enumerate(classes):
            labels = None if c is None else torch.full((len(chunk),), c, dtype=torch.long, device=device)
            # the raster factors (`logits`), not `forward`: for the masked kind forward is its network, which sees
            # every code it is given
            logits = prior.logits(chunk, prior.condition(labels, len(chunk)))
            logp = -F.cross_entropy(logits.float(), chunk, reduction="none").flatten(1)
            out[i : i + CHUNK, c_idx] = logp[:, :positions].double().sum(1).cpu()
    prior.train(was_training)
    return out


def class_posterior(
    prior, codes: torch.Tensor, log_class_prior: torch.Tensor, positions: int | None = None
) -> torch.Tensor:
    """p(c | codes) ∝ p(codes | c) p(c): [N, classes], rows summing to 1."""
    return torch.softmax(class_log_likelihoods(prior, codes, positions) + log_class_prior, 1)
