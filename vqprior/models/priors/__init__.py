"""Priors over code maps: the interface (`base.Prior`), its contract (`contract.check_prior`) and implementations."""

from .base import Prior, sample
from .contract import check_prior

__all__ = ["Prior", "check_prior", "sample"]
