"""vqprior: a VQ-VAE learns a discrete image code, a gated PixelCNN learns a prior over it, and the pair generates images."""

__version__ = "0.1.0"


def load(run_dir="artifacts/mnist", device="auto"):
    """A finished run: `vqprior.load("artifacts/mnist").generate(labels=[3, 7])`. See vqprior.api."""
    from .api import load as _load

    return _load(run_dir, device)
