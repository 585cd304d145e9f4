"""Rebuild trained models from earlier stages' folders, from their saved resolved configs (nothing re-typed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .artifacts import load_json, load_weights, read_stage
from .config import validate_config
from .models.pixelcnn import GatedPixelCNN
from .models.vqvae import VQVAE, build_vqvae


@dataclass
class TrainedVQVAE:
    model: VQVAE
    folder: Path
    manifest: dict
    image_shape: tuple[int, int, int]
    grid: tuple[int, int]
    class_names: list[str] | None

    @property
    def weights(self) -> Path:
        return self.folder / "vqvae.safetensors"


@dataclass
class TrainedPrior:
    model: GatedPixelCNN
    folder: Path
    manifest: dict
    grid: tuple[int, int]
    class_names: list[str] | None


def load_vqvae(run_dir: Path, needed_by: int, device: torch.device) -> TrainedVQVAE:
    folder, manifest = read_stage(run_dir, 1, needed_by)
    saved = load_json(folder / "config.json")
    cfg = validate_config(saved["config"])
    image_shape = tuple(saved["image_shape"])
    model, grid = build_vqvae(cfg.vqvae, image_shape)
    load_weights(folder / "vqvae.safetensors", model)
    return TrainedVQVAE(model.to(device).eval(), folder, manifest, image_shape, grid, saved.get("class_names"))


def load_prior(run_dir: Path, needed_by: int, device: torch.device) -> TrainedPrior:
    folder, manifest = read_stage(run_dir, 3, needed_by)
    saved = load_json(folder / "config.json")
    model = GatedPixelCNN(**saved["model"])
    load_weights(folder / "prior.safetensors", model)
    return TrainedPrior(model.to(device).eval(), folder, manifest, tuple(saved["grid"]), saved.get("class_names"))
