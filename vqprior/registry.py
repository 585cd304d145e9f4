"""The built-in components by name: the one table that says what exists, what role it plays and its default size.
A config names one of these, or (only with the user's explicit opt-in, `--trust-code` / `trust_code=True`) a class
of their own as "package.module:Class" or "path/to/file.py:Class".

Adding a built-in prior kind (or encoder, decoder) is its module plus one `Builtin` line here: the config's
`prior.kind` choices, its defaults and the trust check all come from this table. Import paths are plain strings, so
reading the table imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Builtin:
    path: str  # "package.module:Class"
    role: str  # "encoder", "decoder", "quantizer" or "prior"
    defaults: dict = field(default_factory=dict)  # constructor params a config starts from (why: beside each line)


BUILTINS: dict[str, Builtin] = {
    # 64 channels and one residual block: reconstructions at 0.47x the real-data floor on MNIST (README numbers)
    "conv_encoder": Builtin("vqprior.models.vqvae:ConvEncoder", "encoder", {"hidden": 64, "res_blocks": 1}),
    "conv_decoder": Builtin("vqprior.models.vqvae:ConvDecoder", "decoder", {"hidden": 64, "res_blocks": 1}),
    # 8 gated layers of 64 channels, 3-wide kernels: for 8 epochs, sample FD/floor 1.97 where 48 channels x 5 epochs
    # gave 2.81 (validation slice, guidance 1.5); it fits the 10-minute budget on 2 cores (README numbers). The least
    # depth that holds the samples: 7 layers (0.85x the stage-3 time) read 1.92x against 1.87x (median of 3 held-out
    # seeds), 6 layers 2.06x; 10 layers the same as 8 on two seeds for 1.2x the time (docs/numbers.md)
    "gated_pixelcnn": Builtin(
        "vqprior.models.priors.gated_pixelcnn:GatedPixelCNN", "prior", {"channels": 64, "layers": 8, "kernel": 3}
    ),
    # how latents become codes (vqvae.quantizer): learned codes with EMA updates (decay 0.99 and commitment 0.25 as in
    # the VQ-VAE paper's EMA variant; a code used less than once per batch, on average, is re-seeded), or a fixed grid
    # (vqprior/models/fsq.py; [8, 4, 4] = 128 codes, like the default codebook)
    "ema_vq": Builtin(
        "vqprior.models.quantizer:VectorQuantizer",
        "quantizer",
        {"decay": 0.99, "commitment": 0.25, "dead_code_threshold": 1.0},
    ),
    "fsq": Builtin("vqprior.models.fsq:FSQ", "quantizer", {"levels": [8, 4, 4]}),
    # the PixelRNN paper's recurrent priors (README, "Prior kinds", compares the three at equal training time)
    "row_lstm": Builtin("vqprior.models.priors.pixel_rnn:RowLSTM", "prior", {"channels": 64, "layers": 4, "kernel": 3}),
    "diagonal_bilstm": Builtin(
        "vqprior.models.priors.pixel_rnn:DiagonalBiLSTM", "prior", {"channels": 64, "layers": 4}
    ),
    # a decoder-only transformer over the 49 raster codes (README, "Prior kinds")
    "transformer": Builtin(
        "vqprior.models.priors.transformer:TransformerPrior",
        "prior",
        {"width": 128, "depth": 4, "heads": 4, "dropout": 0.0},
    ),
    # MaskGIT-style: predicts hidden codes from all visible ones, decodes a map in `decode_steps` parallel steps and fills
    # any region; its exact likelihood is the raster one (docs/sampling.md, "The masked kind"). The transformer's size
    "masked": Builtin(
        "vqprior.models.priors.masked:MaskedPrior",
        "prior",
        {"width": 128, "depth": 4, "heads": 4, "dropout": 0.0, "decode_steps": 8},
    ),
}


def builtin_name(target: str) -> str | None:
    """The registry name of a built-in given by name or by its import path (run folders written before the
    registry saved import paths); None for anything else."""
    if target in BUILTINS:
        return target
    return next((name for name, b in BUILTINS.items() if b.path == target), None)


def names(role: str) -> list[str]:
    """The built-ins of one role, in table order (e.g. the prior kinds)."""
    return [name for name, b in BUILTINS.items() if b.role == role]
