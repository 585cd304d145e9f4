"""Soft labels: class weights [N, classes] that draw digits between classes (stage 4's --mix and --morph, the page's
mix and morph, `Run.generate(labels=weights)`). One place builds them, so the command line and the page agree."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def class_mix(num_classes: int, weights: Mapping[int, float] | Iterable[tuple[int, float]]) -> torch.Tensor:
    """One row [1, num_classes] with weight w on class c for each (c, w); a class named twice gets the sum."""
    row = torch.zeros(1, num_classes, dtype=torch.float64)
    for c, w in weights.items() if isinstance(weights, Mapping) else weights:
        row[0, c] += w
    return row


def class_morph(num_classes: int, a: int, b: int, steps: int) -> torch.Tensor:
    """[steps, num_classes]: step k puts 1 - k/(steps-1) on class a and k/(steps-1) on class b."""
    return torch.cat([class_mix(num_classes, [(a, 1 - k / (steps - 1)), (b, k / (steps - 1))]) for k in range(steps)])
