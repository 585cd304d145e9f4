"""Rebuild trained models from earlier stages' folders, from their saved constructor arguments.

Nothing is re-typed and no whole config is re-validated: renaming a config key later does not break
existing run folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import components
from .artifacts import load_weights
from .errors import UserError
from .models.priors.base import Prior
from .models.vqvae import VQVAE, rebuild_vqvae
from .run_folder import RunFolder, as_run_folder

MAX_CODES = 65536  # vqvae.codebook_size's limit (and FSQ's product of levels): larger saved sizes are not a run's
MAX_GRID = 4096  # code map sides beyond this are not a run's either (a 16,384-pixel image at the default encoder)


def _size(value, low: int, high: int, what: str) -> int:
    """A saved size checked before anything is built from it (a huge one would allocate, a float would crash)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in {low}..{high:,}, got {value!r}")
    return value


def _check_quantizer(saved) -> None:
    from .models.vqvae import quantizer_section

    if not isinstance(saved, dict):
        raise ValueError("quantizer must be a section")
    saved = quantizer_section(saved)
    if not isinstance(saved.get("target"), str) or not isinstance(saved.get("params"), dict):
        raise ValueError("quantizer must be {target, params}")
    saved = saved["params"]
    if "codebook_size" in saved:
        _size(saved["codebook_size"], 2, MAX_CODES, "quantizer.codebook_size")
    if "levels" in saved:
        levels = saved["levels"]
        if not isinstance(levels, list) or not levels:
            raise ValueError(f"quantizer.levels must be a list, got {levels!r}")
        product = 1
        for level in levels:
            product *= _size(level, 2, 256, "a quantizer level")
        _size(product, 2, MAX_CODES, "the product of quantizer.levels")


@dataclass
class TrainedVQVAE:
    model: VQVAE
    run: RunFolder
    manifest: dict

    @property
    def folder(self) -> Path:
        return self.run.stage(1)

    @property
    def weights(self) -> Path:
        return self.run.weights(1)

    @property
    def grid(self) -> tuple[int, int]:
        return self.model.grid

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.run.saved(1)["vqvae"]["image_shape"])

    @property
    def class_names(self) -> list[str] | None:
        return self.run.class_names()


@dataclass
class TrainedPrior:
    model: Prior
    run: RunFolder
    manifest: dict
    grid: tuple[int, int]
    class_names: list[str] | None

    @property
    def folder(self) -> Path:
        return self.run.stage(3)

    @property
    def weights(self) -> Path:
        return self.run.weights(3)


def load_vqvae(run: RunFolder | Path, needed_by: int | None, device: torch.device) -> TrainedVQVAE:
    run = as_run_folder(run)
    _, manifest = run.read_stage(1, needed_by)
    constructor = run.saved(1).get("vqvae")
    if not isinstance(constructor, dict):
        raise UserError(f"{run.config_file(1)} has no 'vqvae' section; re-run stage 1")
    for part in ("encoder", "decoder"):
        _component_section(constructor, part, run.config_file(1))
    try:
        _check_quantizer(constructor.get("quantizer"))
        model = rebuild_vqvae(constructor)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(
            f"{run.config_file(1)} does not describe a VQ-VAE ({type(e).__name__}: {e}); re-run stage 1"
        ) from None
    load_weights(run.weights(1), model)
    return TrainedVQVAE(model.to(device).eval(), run, manifest)


def load_prior(
    run: RunFolder | Path, needed_by: int | None, device: torch.device, vqvae: TrainedVQVAE | None = None
) -> TrainedPrior:
    """The trained prior; with `vqvae`, also checked to model that VQ-VAE's codes (same K and grid)."""
    run = as_run_folder(run)
    _, manifest = run.read_stage(3, needed_by)
    saved = run.saved(3)
    resolved = run.component(3, "prior")
    class_names = saved.get("class_names")
    try:
        if not isinstance(saved["grid"], list) or len(saved["grid"]) != 2:
            raise ValueError(f"grid must be two sizes, got {saved['grid']!r}")
        grid = tuple(_size(v, 1, MAX_GRID, "a grid size") for v in saved["grid"])
        if not (class_names is None or isinstance(class_names, list)):
            raise ValueError("class_names must be a list")
        params = resolved.get("params", {})
        if "codebook_size" in params:
            _size(params["codebook_size"], 2, MAX_CODES, "prior.params.codebook_size")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{run.config_file(3)}: {e}; re-run stage 3") from None
    model = components.instantiate(resolved)
    if not isinstance(model, Prior):
        raise UserError(f"{run.config_file(3)}: {resolved['target']!r} is not a vqprior prior; re-run stage 3")
    if model.num_classes != len(class_names or []):
        raise UserError(
            f"{run.config_file(3)}: the prior knows {model.num_classes} classes but names "
            f"{len(class_names or [])}; re-run stage 3"
        )
    load_weights(run.weights(3), model)
    prior = TrainedPrior(model.to(device).eval(), run, manifest, grid, class_names)
    if vqvae is not None:
        check_prior_fits(prior, vqvae)
    return prior


def check_prior_fits(prior: TrainedPrior, vqvae: TrainedVQVAE) -> None:
    """A prior models one VQ-VAE's codes: the same K and grid (hashes prove the lineage, this the shapes)."""
    k, grid = prior.model.codebook_size, prior.grid
    if (k, grid) != (vqvae.model.quantizer.codebook_size, tuple(vqvae.grid)):
        raise UserError(
            f"the prior models K={k} codes on a {grid[0]}x{grid[1]} grid but the VQ-VAE has "
            f"K={vqvae.model.quantizer.codebook_size} on {vqvae.grid[0]}x{vqvae.grid[1]}; re-run stages 2 and 3"
        )


def _component_section(saved, key: str, config_file: Path) -> dict:
    section = saved.get(key) if isinstance(saved, dict) else None
    if not (
        isinstance(section, dict)
        and isinstance(section.get("target"), str)
        and isinstance(section.get("params", {}), dict)
    ):
        raise UserError(f"{config_file} has no valid {key!r} {{target, params}}; re-run that stage")
    return section
