"""Stage 4: draw new code maps from the prior, one code at a time, and decode them into images."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

from vqprior import guidance
from vqprior.artifacts import save_json, write_bytes_atomic
from vqprior.class_names import name_of, resolve, resolve_all
from vqprior.config import Config
from vqprior.datasets import to_float
from vqprior.errors import UserError
from vqprior.models.priors.base import SEED_BLOCK, generate
from vqprior.models.vqvae import decode_images
from vqprior.report.progress import write_gif
from vqprior.report.sheets import labelled_sheet
from vqprior.reporter import Reporter
from vqprior.restore import check_prior_fits, load_prior, load_vqvae
from vqprior.run_folder import WEIGHTS, RunFolder
from vqprior.runtime import Runtime
from vqprior.soft_labels import class_mix, class_morph

GRID_COLUMNS = 32  # the PNG shows at most this many images per row; the .npz has all


def requested_labels(cfg: Config, class_names: list[str] | None) -> tuple[torch.Tensor | None, list[str]]:
    """Labels for every image to draw (int [N] or soft weights [N, classes]) and one caption per grid row: each
    requested class by name or index (vqprior.class_names), refused in one line before any model is loaded."""
    s = cfg.sample
    num_classes = len(class_names or [])
    if not num_classes:
        if s.labels or s.mix:
            raise UserError("the prior is unconditional (its codes had no labels); drop --label/--mix")
        return None, ["unconditional"]
    if s.mix:
        weights = [(resolve(c, class_names, "--mix class"), w) for c, w in s.mix.items()]
        caption = " + ".join(f"{w:g} {name_of(c, class_names)}" for c, w in weights)
        return class_mix(num_classes, weights).repeat(s.per_class, 1), [caption]
    classes = resolve_all(s.labels, class_names, "--label") if s.labels else list(range(num_classes))
    return torch.tensor(classes).repeat_interleave(s.per_class), [name_of(c, class_names) for c in classes]


def check_size(cfg: Config, total: int, grid: tuple[int, int], image_shape: tuple[int, ...], what: str) -> None:
    """Refuse, before any work, a job larger than sample.limit, saying how big and how long it would be."""
    if total <= cfg.sample.limit:
        return
    gb = total * (math.prod(image_shape) + 8 * math.prod(grid)) / 1e9
    minutes = total / 1000 / 60  # about 1,000 maps/s with the cached sampler on a 2-core CPU (README)
    raise UserError(
        f"{what} = {total:,} maps: about {gb:.1f} GB in memory and samples.npz, and ~{minutes:.0f} min on a small CPU; "
        f"that is more than sample.limit={cfg.sample.limit:,}: lower --per-class, or --set sample.limit={total} to confirm"
    )


def fingerprint(cfg: Config) -> dict | None:
    """What stage 4's outputs depend on: the sampling settings, the seed, and the trained prior and VQ-VAE."""
    run_folder = RunFolder(cfg.run_dir())
    prior, vqvae = run_folder.output_sha(3, WEIGHTS[3]), run_folder.output_sha(1, WEIGHTS[1])
    if prior is None or vqvae is None:
        return None
    return {"sample": cfg.sample.model_dump(mode="json"), "seed": cfg.run.seed, "prior": prior, "vqvae": vqvae}


def generate_shared(
    rt: Runtime, prior, total: int, grid, labels, cfg: Config, seed: int, reporter: Reporter
) -> torch.Tensor:
    """All `total` maps; under torchrun each process draws whole noise blocks of them and rank 0 gathers them.
    A map's noise depends only on (seed, its index), so the images do not depend on the number of processes."""
    blocks = list(range(0, total, SEED_BLOCK))
    lo, hi = rt.my_range(len(blocks))
    mine = blocks[lo:hi]
    lo, hi = (mine[0], min(total, mine[-1] + SEED_BLOCK)) if mine else (0, 0)
    part = torch.empty(0, *grid, dtype=torch.long)
    if hi > lo:
        chunk_labels = None if labels is None else labels[lo:hi]
        part = generate(
            prior,
            hi - lo,
            grid,
            chunk_labels,
            cfg.sample.temperature,
            seed,
            cfg.sample.batch_size,
            cfg.sample.sampler,
            reporter.track,
            cfg.sample.guidance,
            first=lo,
        )
    return torch.cat(rt.gather(part))


def run(cfg: Config, reporter: Reporter = Reporter(), rt: Runtime | None = None) -> Path:
    started = time.perf_counter()
    rt = rt or Runtime.setup(cfg.run)
    rt.seed_all()
    run_folder = RunFolder(cfg.run_dir())
    run_folder.read_stage(3, needed_by=4)
    class_names = run_folder.saved(3).get("class_names")  # checked against the prior when it is loaded
    if cfg.sample.morph:  # a class that is not there is refused before the models load (seconds)
        ends = resolve_all(cfg.sample.morph, class_names, "--morph class")
    else:
        labels, rows = requested_labels(cfg, class_names)
    prior = load_prior(run_folder, needed_by=4, device=rt.device)  # refuses a prior trained on another VQ-VAE's codes
    vq = load_vqvae(run_folder, needed_by=4, device=rt.device)
    check_prior_fits(prior, vq)  # and one made for another codebook size or grid
    if cfg.sample.morph:
        return _morph(cfg, prior, vq, rt, reporter, started, ends)
    total = cfg.sample.per_class * len(rows)
    check_size(cfg, total, prior.grid, vq.image_shape, f"--per-class {cfg.sample.per_class} x {len(rows)} row(s)")
    seed = cfg.run.seed if cfg.sample.seed is None else cfg.sample.seed
    how = (
        f"{getattr(prior.model, 'decode_steps', 'its own')} parallel steps"
        if prior.model.parallel and cfg.sample.sampler == "cached"
        else f"{cfg.sample.sampler} sampler"
    )
    reporter.log(
        f"stage 4: drawing {total} code maps ({how}, temperature {cfg.sample.temperature:g}, "
        f"guidance {guidance.label(cfg.sample.guidance)}, seed {seed})"
    )

    t0 = time.perf_counter()
    codes = generate_shared(rt, prior.model, total, prior.grid, labels, cfg, seed, reporter)
    sample_seconds = time.perf_counter() - t0
    images = decode_images(vq.model, codes)
    reporter.log(
        f"  {total} images in {time.perf_counter() - t0:.1f}s ({total * codes[0].numel() / sample_seconds:,.0f} codes/s)"
    )

    per_row = cfg.sample.per_class
    shown = torch.cat([images[r * per_row : r * per_row + min(per_row, GRID_COLUMNS)] for r in range(len(rows))])
    if rt.is_main:
        with run_folder.writing_stage(4) as out:
            write_bytes_atomic(out / "samples.png", labelled_sheet(shown, min(per_row, GRID_COLUMNS), rows))
            extra = (
                {}
                if labels is None
                else ({"label_weights": labels.numpy()} if labels.is_floating_point() else {"labels": labels.numpy()})
            )
            np.savez_compressed(out / "samples.npz", images=images.numpy(), codes=codes.numpy(), **extra)
            save_json(
                out / "rows.json", {"rows": rows, "per_row": per_row, "shown_per_row": min(per_row, GRID_COLUMNS)}
            )
            run_folder.write_manifest(
                out,
                4,
                {"prior": prior.weights, "vqvae": vq.weights},
                cfg.model_dump(mode="json"),
                {"sampling": sample_seconds, "total": time.perf_counter() - started},
                fingerprint(cfg),
                {"seed": seed, "count": total},
            )
    rt.barrier()
    return run_folder.stage(4)


def _morph(cfg: Config, prior, vq, rt: Runtime, reporter: Reporter, started: float, ends: list[int]) -> Path:
    """Strips whose soft label moves from class a to class b; every step of a strip uses the same noise."""
    a, b = ends
    num_classes = prior.model.num_classes
    seed = cfg.run.seed if cfg.sample.seed is None else cfg.sample.seed
    n, steps = cfg.sample.per_class, cfg.sample.morph_steps
    check_size(cfg, n * steps, prior.grid, vq.image_shape, f"--per-class {n} strips x {steps} steps")
    names = prior.class_names
    reporter.log(f"stage 4: {n} morphs from {name_of(a, names)} to {name_of(b, names)} in {steps} steps (seed {seed})")
    frames = []
    for row in class_morph(num_classes, a, b, steps):
        weights = row.repeat(n, 1)
        # first=0 for every step: the same maps' noise, only the label changes
        frames.append(
            generate(prior.model, n, prior.grid, weights, cfg.sample.temperature, seed, guidance=cfg.sample.guidance)
        )
    codes = torch.stack(frames, 1)  # [n, steps, h, w]
    images = decode_images(vq.model, codes.flatten(0, 1)).view(n, steps, *vq.image_shape)
    if rt.is_main:
        with vq.run.writing_stage(4) as out:
            save_image(to_float(images.flatten(0, 1)), out / "morph.png", nrow=steps, padding=2, pad_value=0.5)
            gif_frames = [
                make_grid(to_float(images[:, k]), nrow=min(n, GRID_COLUMNS), padding=2, pad_value=0.5)
                for k in range(steps)
            ]
            write_gif(
                [Image.fromarray(f.mul(255).round().byte().permute(1, 2, 0).numpy()) for f in gif_frames],
                out / "morph.gif",
            )
            np.savez_compressed(
                out / "samples.npz", images=images.numpy(), codes=codes.numpy(), weights_of_b=np.linspace(0, 1, steps)
            )
            vq.run.write_manifest(
                out,
                4,
                {"prior": prior.weights, "vqvae": vq.weights},
                cfg.model_dump(mode="json"),
                {"total": time.perf_counter() - started},
                fingerprint(cfg),
                {"seed": seed, "morph": [a, b], "steps": steps},
            )
    rt.barrier()
    return vq.run.stage(4)
