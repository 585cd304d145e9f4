"""Priors over code maps: the interface (`base.Prior`) and its implementations."""

from .base import Prior, check_prior, sample

__all__ = ["Prior", "check_prior", "sample"]
