"""vqprior: a VQ-VAE learns a discrete image code, an autoregressive prior learns its code maps, and the pair generates images."""

from .version import __version__

__all__ = ["__version__", "load"]


def load(run_dir="artifacts/mnist", device="auto", trust_code=False):
    """A finished run: `vqprior.load("artifacts/mnist").generate(labels=[3, 7])`. See vqprior.api.
    trust_code=True lets a run whose config names code of its own (not a vqprior built-in) run that code."""
    from .api import load as _load

    return _load(run_dir, device, trust_code)
