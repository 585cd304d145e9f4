"""Swappable parts given as {target = "name" | "package.module:Class" | "path/to/file.py:Class", params = {...}}.

A built-in is named from the registry (`vqprior.registry`). Anything else is code, and a config file or a
shared run folder must never pick code to run on its own: outside the registry a target is refused unless
the user opted in for this command (`--trust-code`, `vqprior.load(..., trust_code=True)`, or
`with components.trusting_code():`), and even then it must be a torch.nn.Module subclass before it is called.

The pipeline passes what it knows (in_channels, code_dim) to a constructor that accepts those names, so
a component's params only hold its own design choices.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Component
from .errors import UserError
from .registry import BUILTINS, builtin_name
from .trust import code_is_trusted, trusting_code  # noqa: E402,F401  (trusting_code is re-exported)


def _import_target(target: str) -> type:
    """The class a target names: a registry name (or a built-in's import path) always; anything else only
    while the user trusts code. Either way it must be a torch.nn.Module subclass."""
    name = builtin_name(target)
    if name is not None:
        target = BUILTINS[name].path
    elif not code_is_trusted():
        raise UserError(
            f"component {target!r} is not a vqprior built-in ({', '.join(BUILTINS)}); code named by a config or "
            f"a run folder runs only if you trust it: pass --trust-code (Python: trust_code=True)"
        )
    where, _, attr = target.rpartition(":")
    if where.endswith(".py"):
        module = _import_file(target, Path(where).expanduser())
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise UserError(
                f"component {target!r}: cannot import module {where!r} ({e}); is it installed or on PYTHONPATH?"
            ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise UserError(f"component {target!r}: module {where!r} has no {attr!r}")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise UserError(
            f"component {target!r} is a {type(cls).__name__}, not a torch.nn.Module class; point target at one"
        )
    return cls


def _import_file(target: str, path: Path):
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
    return module


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
        raise UserError(
            f"component {target!r}: constructing it with params {params} failed: {type(e).__name__}: {e}"
        ) from None
    return module


def probe_autoencoder(
    encoder: nn.Module,
    decoder: nn.Module,
    enc_target: str,
    dec_target: str,
    image_shape: tuple[int, int, int],
    code_dim: int,
) -> tuple[int, int]:
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
                raise UserError(
                    f"encoder {enc_target!r} failed on a [2, {c}, {h}, {w}] batch: {type(e).__name__}: {e}"
                ) from None
            if not isinstance(z, torch.Tensor) or z.dim() != 4:
                got = f"rank {z.dim()} shape {list(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
                raise UserError(f"encoder {enc_target!r} must return [B, D, h, w] latents, got {got}")
            if z.shape[1] != code_dim:
                raise UserError(
                    f"encoder {enc_target!r} returns D={z.shape[1]} channels but vqvae.code_dim={code_dim}; make them equal"
                )
            try:
                y = decoder(z)
            except Exception as e:
                raise UserError(
                    f"decoder {dec_target!r} failed on latents {list(z.shape)}: {type(e).__name__}: {e}"
                ) from None
            if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
                got = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise UserError(f"decoder {dec_target!r} must return images of shape {list(x.shape)}, got {got}")
    finally:
        encoder.train(was_training[0]), decoder.train(was_training[1])
    return int(z.shape[2]), int(z.shape[3])
