"""Stage 4: draw new code maps from the prior, one code at a time, and decode them into images."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from vqprior.artifacts import save_json, write_manifest, writing_stage
from vqprior.config import Config
from vqprior.errors import UserError
from vqprior.models.sampling import sample
from vqprior.restore import load_prior, load_vqvae
from vqprior.runtime import Reporter, setup

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


def run(cfg: Config, reporter: Reporter = Reporter()) -> Path:
    started = time.perf_counter()
    device = setup(cfg.run)
    prior = load_prior(cfg.run_dir(), needed_by=4, device=device)
    vq = load_vqvae(cfg.run_dir(), needed_by=4, device=device)
    decoder_sha = vq.manifest["outputs"]["vqvae.safetensors"]
    if prior.manifest["vqvae_sha256"] != decoder_sha:
        raise UserError(f"the prior in {prior.folder} was trained on codes of a VQ-VAE with sha256 {prior.manifest['vqvae_sha256'][:12]}..., "
                        f"but {vq.weights} has {decoder_sha[:12]}...; re-run stages 2 and 3")
    labels, rows = requested_labels(cfg, prior.model.num_classes)
    total = cfg.sample.n * len(rows)
    seed = cfg.run.seed if cfg.sample.seed is None else cfg.sample.seed
    reporter.log(f"stage 4: drawing {total} code maps ({cfg.sample.sampler} sampler, temperature {cfg.sample.temperature:g}, seed {seed})")

    t0 = time.perf_counter()
    chunks = []
    starts = range(0, total, cfg.sample.batch_size)
    for c, start in enumerate(reporter.track(starts, len(starts), "stage 4 sampling")):
        stop = min(total, start + cfg.sample.batch_size)
        chunk_labels = None if labels is None else labels[start:stop]
        # chunk c uses seed + c: the same config always gives the same images
        chunks.append(sample(prior.model, stop - start, prior.grid, chunk_labels, cfg.sample.temperature, seed + c, cfg.sample.sampler))
    codes = torch.cat(chunks)
    sample_seconds = time.perf_counter() - t0
    with torch.no_grad():
        images = torch.cat([vq.model.decode(codes[i : i + 1000]).clamp(0, 1).cpu() for i in range(0, total, 1000)])
    reporter.log(f"  {total} images in {time.perf_counter() - t0:.1f}s ({total * codes[0].numel() / sample_seconds:,.0f} codes/s)")

    per_row = cfg.sample.n
    shown = torch.cat([images[r * per_row : r * per_row + min(per_row, GRID_COLUMNS)] for r in range(len(rows))])
    with writing_stage(cfg.run_dir(), 4) as out:
        save_image(shown, out / "samples.png", nrow=min(per_row, GRID_COLUMNS), padding=2, pad_value=0.5)
        extra = {} if labels is None else ({"label_weights": labels.numpy()} if labels.is_floating_point() else {"labels": labels.numpy()})
        np.savez_compressed(out / "samples.npz", images=(images * 255).round().to(torch.uint8).numpy(),
                            codes=codes.cpu().numpy(), **extra)
        save_json(out / "rows.json", {"rows": rows, "per_row": per_row, "shown_per_row": min(per_row, GRID_COLUMNS)})
        write_manifest(out, 4, {"prior": prior.folder / "prior.safetensors", "vqvae": vq.weights}, cfg.model_dump(mode="json"),
                       {"sampling": sample_seconds, "total": time.perf_counter() - started}, {"seed": seed, "count": total})
    return cfg.run_dir() / "stage4"
