"""The VQ-VAE: encoder -> vector quantizer -> decoder, with default convolutional encoder and decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import components
from ..config import VQVAESection
from ..errors import UserError
from .quantizer import Quantizer


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvEncoder(nn.Module):
    """Images [B, C, H, W] -> latents [B, code_dim, H/2^downsamples, W/2^downsamples] (28x28 -> 7x7 by default)."""

    def __init__(
        self, in_channels: int = 1, code_dim: int = 32, hidden: int = 64, res_blocks: int = 1, downsamples: int = 2
    ):
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for i in range(downsamples):
            out = hidden // 2 ** (downsamples - 1 - i)
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.ReLU()]
            ch = out
        layers += [nn.Conv2d(ch, hidden, 3, padding=1)]
        layers += [ResBlock(hidden) for _ in range(res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(hidden, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Latents [B, code_dim, h, w] -> images [B, out_channels, h*2^upsamples, w*2^upsamples]; mirrors ConvEncoder."""

    def __init__(
        self, in_channels: int = 1, code_dim: int = 32, hidden: int = 64, res_blocks: int = 1, upsamples: int = 2
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(code_dim, hidden, 3, padding=1)]
        layers += [ResBlock(hidden) for _ in range(res_blocks)]
        layers += [nn.ReLU()]
        ch = hidden
        for i in range(upsamples):
            last = i == upsamples - 1
            out = in_channels if last else hidden // 2 ** (i + 1)
            layers += [nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1)]
            if not last:
                layers += [nn.ReLU()]
            ch = out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VQVAE(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        quantizer: Quantizer,
        grid: tuple[int, int],
        likelihood: str = "mse",
    ):
        super().__init__()
        self.encoder, self.decoder, self.quantizer = encoder, decoder, quantizer
        self.grid = grid  # the code map's (h, w) for the training image size
        # "bce": the decoder's output is per-pixel logits (Bernoulli likelihood); images are their sigmoid
        self.likelihood = likelihood

    def decoder_output_to_images(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out) if self.likelihood == "bce" else out

    def reconstruction_loss(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "bce":
            return F.binary_cross_entropy_with_logits(out, x)
        return F.mse_loss(out, x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (decoder output: images, or logits for "bce"; code indices [B, h, w]; commitment loss)."""
        q, indices, commitment_loss = self.quantizer(self.encoder(x))
        return self.decoder(q), indices, commitment_loss

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> their reconstructions in [0, 1]."""
        return self.decoder_output_to_images(self(x)[0]).clamp(0, 1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        b, d, h, w = z.shape
        return self.quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Code maps [B, h, w] -> images [B, C, H, W] in [0, 1] (not clamped for "mse")."""
        return self.decoder_output_to_images(self.decoder(self.quantizer.lookup(indices)))


def build_vqvae(cfg: VQVAESection, image_shape: tuple[int, int, int]) -> tuple[VQVAE, dict]:
    """Build encoder and decoder from their component specs and probe them. Returns the model and its
    constructor arguments (saved beside the weights; `rebuild_vqvae` makes the same model from them)."""
    context = {"in_channels": image_shape[0], "code_dim": cfg.code_dim}
    constructor = {
        "image_shape": list(image_shape),
        "encoder": components.resolve(cfg.encoder, **context),
        "decoder": components.resolve(cfg.decoder, **context),
        "quantizer": components.resolve(
            cfg.quantizer_component(), codebook_size=cfg.codebook_size, code_dim=cfg.code_dim
        ),
        "likelihood": cfg.likelihood,
    }
    return rebuild_vqvae(constructor), constructor


def quantizer_section(saved: dict) -> dict:
    """A saved quantizer as {target, params}: as saved, or from the forms runs saved before quantizers were
    components ({"kind": "fsq", ...}, or the EMA quantizer's own arguments without a kind)."""
    if "target" in saved:
        return saved
    params = dict(saved)
    kind = params.pop("kind", "ema_vq")
    if kind not in ("ema_vq", "fsq"):
        raise UserError(f"unknown quantizer kind {kind!r} in the saved VQ-VAE; re-run stage 1")
    return {"target": kind, "params": params}


def build_quantizer(saved: dict) -> Quantizer:
    """The quantizer of saved constructor arguments (a registry name, or your own class with trusted code)."""
    section = quantizer_section(saved)
    quantizer = components.instantiate(section)
    if not isinstance(quantizer, Quantizer):
        raise UserError(
            f"quantizer {section['target']!r} is not a vqprior.models.quantizer.Quantizer (forward, nearest, lookup, "
            f"codebook_size, code_dim); subclass it"
        )
    return quantizer


def rebuild_vqvae(constructor: dict) -> VQVAE:
    """The VQ-VAE of saved constructor arguments, probed; its latent grid is `model.grid`."""
    encoder = components.instantiate(constructor["encoder"])
    decoder = components.instantiate(constructor["decoder"])
    quantizer = build_quantizer(constructor["quantizer"])
    grid = components.probe_autoencoder(
        encoder,
        decoder,
        constructor["encoder"]["target"],
        constructor["decoder"]["target"],
        tuple(constructor["image_shape"]),
        quantizer.code_dim,
    )
    return VQVAE(encoder, decoder, quantizer, grid, constructor.get("likelihood", "mse"))


# images per forward pass in decode_images/encode_images: 250 ran ~2x faster than 1,000 on 2 CPU cores (activations
# stay in cache), with the same outputs
@torch.no_grad()
def decode_images(model: VQVAE, codes: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """Code maps [N, h, w] -> uint8 images [N, C, H, W] on the CPU."""
    device = next(model.parameters()).device
    out = [
        model.decode(codes[i : i + batch].to(device)).clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
        for i in range(0, len(codes), batch)
    ]
    return torch.cat(out)


@torch.no_grad()
def encode_images(model: VQVAE, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> code maps [N, h, w] (long) on the CPU."""
    device = next(model.parameters()).device
    return torch.cat(
        [model.encode(images[i : i + batch].to(device).float().div_(255)).cpu() for i in range(0, len(images), batch)]
    )
