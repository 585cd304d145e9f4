"""Rebuild trained models from earlier stages' folders, from their saved constructor arguments.

Nothing is re-typed and no whole config is re-validated: renaming a config key later does not break
existing run folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import components
from .artifacts import load_json_object, load_weights, read_stage
from .config import check_sampling
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

    @property
    def data(self):
        """Stage 1's data section (what stage 2, eval, the page and --from read), validated into a DataSection."""
        from pydantic import ValidationError

        from .config import DataSection, format_validation_error

        try:
            return DataSection.model_validate(self.saved.get("data"))
        except ValidationError as e:
            raise UserError(
                f"{self.folder / 'config.json'} has a data section that is not valid "
                f"({format_validation_error(e)}); re-run stage 1"
            ) from None


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

    @property
    def sampling(self) -> tuple[float, float]:
        """(temperature, guidance) saved with the prior: the defaults of generate, complete, eval and the page."""
        return saved_sampling(self.folder / "config.json")


def load_vqvae(run_dir: Path, needed_by: int | None, device: torch.device) -> TrainedVQVAE:
    folder, manifest = read_stage(run_dir, 1, needed_by)
    saved = load_json_object(folder / "config.json")
    constructor = saved.get("vqvae") if isinstance(saved, dict) else None
    if not isinstance(constructor, dict):
        raise UserError(f"{folder / 'config.json'} has no 'vqvae' section; re-run stage 1")
    for part in ("encoder", "decoder"):
        _component_section(constructor, part, folder)
    try:
        model = rebuild_vqvae(constructor)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(
            f"{folder / 'config.json'} does not describe a VQ-VAE ({type(e).__name__}: {e}); re-run stage 1"
        ) from None
    load_weights(folder / "vqvae.safetensors", model)
    return TrainedVQVAE(model.to(device).eval(), folder, manifest, saved)


def load_prior(
    run_dir: Path, needed_by: int | None, device: torch.device, vqvae: TrainedVQVAE | None = None
) -> TrainedPrior:
    """The trained prior; with `vqvae`, also checked to model that VQ-VAE's codes (same K and grid)."""
    folder, manifest = read_stage(run_dir, 3, needed_by)
    saved = load_json_object(folder / "config.json")
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
        raise UserError(
            f"{folder / 'config.json'}: the prior knows {model.num_classes} classes but names {len(class_names or [])}; re-run stage 3"
        )
    load_weights(folder / "prior.safetensors", model)
    prior = TrainedPrior(model.to(device).eval(), folder, manifest, grid, class_names)
    if vqvae is not None:
        check_prior_fits(prior, vqvae)
    return prior


def saved_sampling(config_file: Path) -> tuple[float, float]:
    """(temperature, guidance) saved with the prior: the defaults of generate, complete, eval and the page. Checked
    like values a user passes (a forged 1e6 guidance is refused, not used)."""
    saved = load_json_object(config_file)
    sample_cfg = saved.get("config", {}).get("sample", {}) if isinstance(saved.get("config", {}), dict) else None
    if not isinstance(sample_cfg, dict):
        raise UserError(f"{config_file}: config.sample is not a table; re-run stage 3")
    temperature, guidance = sample_cfg.get("temperature", 1.0), sample_cfg.get("guidance", 1.0)
    for key, value in (("temperature", temperature), ("guidance", guidance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{config_file}: sample.{key} must be a number, got {value!r}; re-run stage 3 or stage 4")
    try:
        check_sampling(temperature, guidance)
    except UserError as e:
        raise UserError(f"{config_file} holds saved sampling settings out of range ({e}); re-run stage 3") from None
    return float(temperature), float(guidance)


def check_prior_fits(prior: TrainedPrior, vqvae: TrainedVQVAE) -> None:
    """A prior models one VQ-VAE's codes: the same K and grid (hashes prove the lineage, this the shapes)."""
    k, grid = prior.model.codebook_size, prior.grid
    if (k, grid) != (vqvae.model.quantizer.codebook_size, tuple(vqvae.grid)):
        raise UserError(
            f"the prior models K={k} codes on a {grid[0]}x{grid[1]} grid but the VQ-VAE has "
            f"K={vqvae.model.quantizer.codebook_size} on {vqvae.grid[0]}x{vqvae.grid[1]}; re-run stages 2 and 3"
        )


def _component_section(saved, key: str, folder: Path) -> dict:
    section = saved.get(key) if isinstance(saved, dict) else None
    if not (
        isinstance(section, dict)
        and isinstance(section.get("target"), str)
        and isinstance(section.get("params", {}), dict)
    ):
        raise UserError(f"{folder / 'config.json'} has no valid {key!r} {{target, params}}; re-run that stage")
    return section
