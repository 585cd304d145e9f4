"""Measurements of a trained run: reconstruction error, likelihoods, and (in `vqprior eval`) sample quality."""

from .likelihood import nll_bits_per_code
from .reconstruction import reconstruction_metrics

__all__ = ["nll_bits_per_code", "reconstruction_metrics"]
