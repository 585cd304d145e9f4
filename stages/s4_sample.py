"""Stage 4: draw new code maps from the prior, one code at a time, and decode them into images."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from vqprior.artifacts import output_sha, save_json, write_manifest, writing_stage
from vqprior.config import Config
from vqprior.datasets import to_float
from vqprior.errors import UserError
from vqprior.models.priors.base import generate
from vqprior.models.vqvae import decode_images
from vqprior.restore import load_prior, load_vqvae
from vqprior.runtime import Reporter, Runtime

GRID_COLUMNS = 32  # the PNG shows at most this many images per row; the .npz has all


def requested_labels(cfg: Config, num_classes: int) -> tuple[torch.Tensor | None, list[str]]:
    """Labels for every image to draw (int [N] or soft weights [N, classes]) and one caption per grid row."""
    s = cfg.sample
    if not num_classes:
        if s.labels or s.mix:
            raise UserError("the prior is unconditional (its codes had no labels); drop --label/--mix")
        return None, ["unconditional"]
    for c in [*s.labels, *s.mix]:
        if not 0 <= c < num_classes:
            raise UserError(f"label {c} is out of range: this prior knows classes 0..{num_classes - 1}")
    if s.mix:
        weights = torch.zeros(num_classes, dtype=torch.float64)
        for c, w in s.mix.items():
            weights[c] = w
        return weights.repeat(s.n, 1), [" + ".join(f"{w:g}*{c}" for c, w in s.mix.items())]
    classes = s.labels or list(range(num_classes))
    return torch.tensor(classes).repeat_interleave(s.n), [str(c) for c in classes]


def fingerprint(cfg: Config) -> dict | None:
    """What stage 4's outputs depend on: the sampling settings, the seed, and the trained prior and VQ-VAE."""
    prior, vqvae = output_sha(cfg.run_dir(), 3, "prior.safetensors"), output_sha(cfg.run_dir(), 1, "vqvae.safetensors")
    if prior is None or vqvae is None:
        return None
    return {"sample": cfg.sample.model_dump(mode="json"), "seed": cfg.run.seed, "prior": prior, "vqvae": vqvae}


def run(cfg: Config, reporter: Reporter = Reporter(), rt: Runtime | None = None) -> Path:
    started = time.perf_counter()
    rt = rt or Runtime.setup(cfg.run)
    rt.seed_all()
    prior = load_prior(cfg.run_dir(), needed_by=4, device=rt.device)  # refuses a prior trained on another VQ-VAE's codes
    vq = load_vqvae(cfg.run_dir(), needed_by=4, device=rt.device)
    labels, rows = requested_labels(cfg, prior.model.num_classes)
    total = cfg.sample.n * len(rows)
    seed = cfg.run.seed if cfg.sample.seed is None else cfg.sample.seed
    reporter.log(f"stage 4: drawing {total} code maps ({cfg.sample.sampler} sampler, temperature {cfg.sample.temperature:g}, "
                 f"guidance {cfg.sample.guidance:g}, seed {seed})")

    t0 = time.perf_counter()
    codes = generate(prior.model, total, prior.grid, labels, cfg.sample.temperature, seed, cfg.sample.batch_size,
                     cfg.sample.sampler, reporter.track, cfg.sample.guidance)
    sample_seconds = time.perf_counter() - t0
    images = decode_images(vq.model, codes)
    reporter.log(f"  {total} images in {time.perf_counter() - t0:.1f}s ({total * codes[0].numel() / sample_seconds:,.0f} codes/s)")

    per_row = cfg.sample.n
    shown = torch.cat([images[r * per_row : r * per_row + min(per_row, GRID_COLUMNS)] for r in range(len(rows))])
    if rt.is_main:
        with writing_stage(cfg.run_dir(), 4) as out:
            save_image(to_float(shown), out / "samples.png", nrow=min(per_row, GRID_COLUMNS), padding=2, pad_value=0.5)
            extra = {} if labels is None else ({"label_weights": labels.numpy()} if labels.is_floating_point() else {"labels": labels.numpy()})
            np.savez_compressed(out / "samples.npz", images=images.numpy(), codes=codes.numpy(), **extra)
            save_json(out / "rows.json", {"rows": rows, "per_row": per_row, "shown_per_row": min(per_row, GRID_COLUMNS)})
            write_manifest(out, 4, {"prior": prior.weights, "vqvae": vq.weights}, cfg.model_dump(mode="json"),
                           {"sampling": sample_seconds, "total": time.perf_counter() - started}, fingerprint(cfg),
                           {"seed": seed, "count": total})
    rt.barrier()
    return cfg.run_dir() / "stage4"
