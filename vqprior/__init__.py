"""vqprior: a VQ-VAE learns a discrete image code, a gated PixelCNN learns a prior over it, and the pair generates images."""

__version__ = "0.1.0"
