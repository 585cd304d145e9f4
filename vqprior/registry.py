"""The built-in components by name. A config names one of these, or (only with the user's explicit opt-in,
`--trust-code` / `trust_code=True`) a class of their own as "package.module:Class" or "path/to/file.py:Class".

Names map to import paths as plain strings, so reading this table imports nothing.
"""

from __future__ import annotations

BUILTINS: dict[str, str] = {
    "conv_encoder": "vqprior.models.vqvae:ConvEncoder",
    "conv_decoder": "vqprior.models.vqvae:ConvDecoder",
    "gated_pixelcnn": "vqprior.models.priors.gated_pixelcnn:GatedPixelCNN",
    "row_lstm": "vqprior.models.priors.pixel_rnn:RowLSTM",
    "diagonal_bilstm": "vqprior.models.priors.pixel_rnn:DiagonalBiLSTM",
    "transformer": "vqprior.models.priors.transformer:TransformerPrior",
}
_BY_PATH = {path: name for name, path in BUILTINS.items()}


def builtin_name(target: str) -> str | None:
    """The registry name of a built-in given by name or by its import path (run folders written before the
    registry saved import paths); None for anything else."""
    return target if target in BUILTINS else _BY_PATH.get(target)
