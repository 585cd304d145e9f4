"""Rebuild trained models from earlier stages' folders, from their saved constructor arguments.

Nothing is re-typed and no whole config is re-validated: renaming a config key later does not break
existing run folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import components
from .artifacts import load_json, load_weights, read_stage
from .errors import UserError
from .models.priors.base import Prior
from .models.vqvae import VQVAE, rebuild_vqvae


@dataclass
class TrainedVQVAE:
    model: VQVAE
    folder: Path
    manifest: dict
    saved: dict  # stage 1's config.json: constructor arguments, data section, class names

    @property
    def weights(self) -> Path:
        return self.folder / "vqvae.safetensors"

    @property
    def grid(self) -> tuple[int, int]:
        return self.model.grid

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.saved["vqvae"]["image_shape"])

    @property
    def class_names(self) -> list[str] | None:
        return self.saved.get("class_names")


@dataclass
class TrainedPrior:
    model: Prior
    folder: Path
    manifest: dict
    grid: tuple[int, int]
    class_names: list[str] | None

    @property
    def weights(self) -> Path:
        return self.folder / "prior.safetensors"


def load_vqvae(run_dir: Path, needed_by: int | None, device: torch.device) -> TrainedVQVAE:
    folder, manifest = read_stage(run_dir, 1, needed_by)
    saved = load_json(folder / "config.json")
    constructor = saved.get("vqvae") if isinstance(saved, dict) else None
    if not isinstance(constructor, dict):
        raise UserError(f"{folder / 'config.json'} has no 'vqvae' section; re-run stage 1")
    for part in ("encoder", "decoder"):
        _component_section(constructor, part, folder)
    try:
        model = rebuild_vqvae(constructor)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{folder / 'config.json'} does not describe a VQ-VAE ({type(e).__name__}: {e}); re-run stage 1") from None
    load_weights(folder / "vqvae.safetensors", model)
    return TrainedVQVAE(model.to(device).eval(), folder, manifest, saved)


def load_prior(run_dir: Path, needed_by: int | None, device: torch.device, vqvae: TrainedVQVAE | None = None) -> TrainedPrior:
    """The trained prior; with `vqvae`, also checked to model that VQ-VAE's codes (same K and grid)."""
    folder, manifest = read_stage(run_dir, 3, needed_by)
    saved = load_json(folder / "config.json")
    resolved = _component_section(saved, "prior", folder)
    class_names = saved.get("class_names")
    try:
        grid = tuple(int(v) for v in saved["grid"])
        if len(grid) != 2 or min(grid) < 1 or not (class_names is None or isinstance(class_names, list)):
            raise ValueError("grid must be two positive sizes, class_names a list")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{folder / 'config.json'}: {e}; re-run stage 3") from None
    model = components.instantiate(resolved)
    if not isinstance(model, Prior):
        raise UserError(f"{folder / 'config.json'}: {resolved['target']!r} is not a vqprior prior; re-run stage 3")
    if model.num_classes != len(class_names or []):
        raise UserError(f"{folder / 'config.json'}: the prior knows {model.num_classes} classes but names {len(class_names or [])}; re-run stage 3")
    load_weights(folder / "prior.safetensors", model)
    prior = TrainedPrior(model.to(device).eval(), folder, manifest, grid, class_names)
    if vqvae is not None:
        check_prior_fits(prior, vqvae)
    return prior


def check_prior_fits(prior: TrainedPrior, vqvae: TrainedVQVAE) -> None:
    """A prior models one VQ-VAE's codes: the same K and grid (hashes prove the lineage, this the shapes)."""
    k, grid = prior.model.codebook_size, prior.grid
    if (k, grid) != (vqvae.model.quantizer.codebook_size, tuple(vqvae.grid)):
        raise UserError(f"the prior models K={k} codes on a {grid[0]}x{grid[1]} grid but the VQ-VAE has "
                        f"K={vqvae.model.quantizer.codebook_size} on {vqvae.grid[0]}x{vqvae.grid[1]}; re-run stages 2 and 3")


def _component_section(saved, key: str, folder: Path) -> dict:
    section = saved.get(key) if isinstance(saved, dict) else None
    if not (isinstance(section, dict) and isinstance(section.get("target"), str) and isinstance(section.get("params", {}), dict)):
        raise UserError(f"{folder / 'config.json'} has no valid {key!r} {{target, params}}; re-run that stage")
    return section
