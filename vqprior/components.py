"""Swappable parts given as {target = "package.module:Class" | "path/to/file.py:Class", params = {...}}.

The pipeline passes what it knows (in_channels, code_dim) to a constructor that accepts those names, so
a component's params only hold its own design choices.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .config import Component
from .errors import UserError


@runtime_checkable
class Encoder(Protocol):
    """Maps images [B, C, H, W] (floats in [0, 1]) to latents [B, D, h, w]; D must equal vqvae.code_dim."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Decoder(Protocol):
    """Maps latents [B, D, h, w] back to images [B, C, H, W] of the encoder's input shape."""

    def __call__(self, latents: torch.Tensor) -> torch.Tensor: ...


def _import_target(target: str) -> type:
    where, _, name = target.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise UserError(f"component {target!r}: file {path} not found")
        module_name = f"vqprior_user_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[module_name]
                raise UserError(f"component {target!r}: importing {path} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise UserError(f"component {target!r}: cannot import module {where!r} ({e}); is it installed or on PYTHONPATH?") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise UserError(f"component {target!r}: module {where!r} has no {name!r}")
    return cls


def resolve(spec: Component, **context: Any) -> dict:
    """{target, params}: spec.params plus the context values (in_channels, code_dim, ...) its constructor accepts.
    This is what is saved beside the weights; `instantiate` rebuilds the exact module from it."""
    cls = _import_target(spec.target)
    params = dict(spec.params)
    try:
        accepted = inspect.signature(cls).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    except (TypeError, ValueError):
        accepted, takes_any = {}, False
    for key, value in context.items():
        if key not in params and (key in accepted or takes_any):
            params[key] = value
    return {"target": spec.target, "params": params}


def instantiate(resolved: dict) -> nn.Module:
    """Build target(**params) from a resolved {target, params}."""
    target, params = resolved["target"], resolved["params"]
    cls = _import_target(target)
    try:
        module = cls(**params)
    except Exception as e:
        raise UserError(f"component {target!r}: constructing it with params {params} failed: {type(e).__name__}: {e}") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"component {target!r} is a {type(module).__name__}, expected a torch.nn.Module")
    return module


def build(spec: Component, **context: Any) -> tuple[nn.Module, dict]:
    """Instantiate spec.target with spec.params plus the context values its constructor accepts; returns the
    module and its resolved {target, params}."""
    resolved = resolve(spec, **context)
    return instantiate(resolved), resolved


def probe_autoencoder(encoder: nn.Module, decoder: nn.Module, enc_target: str, dec_target: str, image_shape: tuple[int, int, int], code_dim: int) -> tuple[int, int]:
    """Run a dummy batch through encoder and decoder; return the latent grid (h, w) or raise a one-line UserError."""
    c, h, w = image_shape
    x = torch.rand(2, c, h, w)
    was_training = encoder.training, decoder.training
    encoder.eval(), decoder.eval()
    try:
        with torch.no_grad():
            try:
                z = encoder(x)
            except Exception as e:
                raise UserError(f"encoder {enc_target!r} failed on a [2, {c}, {h}, {w}] batch: {type(e).__name__}: {e}") from None
            if not isinstance(z, torch.Tensor) or z.dim() != 4:
                got = f"rank {z.dim()} shape {list(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
                raise UserError(f"encoder {enc_target!r} must return [B, D, h, w] latents, got {got}")
            if z.shape[1] != code_dim:
                raise UserError(f"encoder {enc_target!r} returns D={z.shape[1]} channels but vqvae.code_dim={code_dim}; make them equal")
            try:
                y = decoder(z)
            except Exception as e:
                raise UserError(f"decoder {dec_target!r} failed on latents {list(z.shape)}: {type(e).__name__}: {e}") from None
            if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
                got = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise UserError(f"decoder {dec_target!r} must return images of shape {list(x.shape)}, got {got}")
    finally:
        encoder.train(was_training[0]), decoder.train(was_training[1])
    return int(z.shape[2]), int(z.shape[3])
