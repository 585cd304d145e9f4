"""Other drawing orders of a code map: a raster prior trained on a map turned around models that map in another
order, and a kept part that is a prefix in one of these orders is completed exactly (ancestral sampling from it,
the class posterior from its exact likelihood), where the raster order would need importance sampling or MCMC.

    raster             rows top to bottom, each left to right: a kept top part is a prefix
    reverse            the map turned 180 degrees: a kept bottom part is a prefix
    transpose          columns left to right, each top to bottom: a kept left part is a prefix
    reverse_transpose  columns right to left: a kept right part is a prefix
"""

from __future__ import annotations

import torch

ORDERS = ("raster", "reverse", "transpose", "reverse_transpose")


def check_orders(orders) -> list[str]:
    """The extra orders a prior is asked to learn (beside raster): known, each once."""
    orders = list(orders)
    bad = [o for o in orders if o not in ORDERS[1:]]
    if bad or len(set(orders)) != len(orders):
        raise ValueError(f"orders must be distinct names from {', '.join(ORDERS[1:])}, got {orders}")
    return orders


def to_order(x: torch.Tensor, order: str) -> torch.Tensor:
    """Maps [..., H, W] laid out so that `order` is their raster order (a view; H and W swap for the transposes)."""
    if order == "raster":
        return x
    if order == "reverse":
        return x.flip(-2, -1)
    if order == "transpose":
        return x.transpose(-2, -1)
    if order == "reverse_transpose":
        return x.transpose(-2, -1).flip(-2, -1)
    raise ValueError(f"unknown order {order!r}")


def from_order(x: torch.Tensor, order: str) -> torch.Tensor:
    """The inverse of to_order: maps laid out for `order` back in the raster layout."""
    if order in ("raster", "reverse", "transpose"):
        return to_order(x, order)  # each is its own inverse
    return x.flip(-2, -1).transpose(-2, -1)
