"""Measurements of a trained run: reconstruction error, likelihoods, and (in `vqprior eval`) sample quality."""

from .likelihood import masked_bits_per_code, nll_bits_per_code
from .reconstruction import reconstruction_metrics

__all__ = ["masked_bits_per_code", "nll_bits_per_code", "reconstruction_metrics"]
