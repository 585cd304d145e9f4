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
    model = rebuild_vqvae(saved["vqvae"])
    load_weights(folder / "vqvae.safetensors", model)
    return TrainedVQVAE(model.to(device).eval(), folder, manifest, saved)


def load_prior(run_dir: Path, needed_by: int | None, device: torch.device) -> TrainedPrior:
    folder, manifest = read_stage(run_dir, 3, needed_by)
    saved = load_json(folder / "config.json")
    model = components.instantiate(saved["prior"])
    load_weights(folder / "prior.safetensors", model)
    return TrainedPrior(model.to(device).eval(), folder, manifest, tuple(saved["grid"]), saved.get("class_names"))
