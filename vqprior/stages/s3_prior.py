"""Stage 3: train the prior on stage 2's code maps (class-conditional when they have labels)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from vqprior import components
from vqprior.artifacts import save_json, save_weights
from vqprior.codes import load_code_maps
from vqprior.config import Config
from vqprior.datasets import to_float
from vqprior.errors import UserError
from vqprior.evaluation import masked_bits_per_code, nll_bits_per_code
from vqprior.models.priors import check_prior, sample
from vqprior.models.vqvae import decode_images
from vqprior.optimizer import WeightEMA, scaled_lr
from vqprior.report.progress import ProgressWriter
from vqprior.reporter import Reporter
from vqprior.restore import load_vqvae
from vqprior.run_folder import CONFIG, METRICS, WEIGHTS, RunFolder
from vqprior.runtime import Runtime, describe
from vqprior.runtime.compile import maybe_compile
from vqprior.training import Trainer

GRID_PER_CLASS = 10  # the per-epoch sample grid: 10 of each class (10x10 for an unconditional prior)
# test maps behind each epoch's test figures but the last (which uses them all): the learning curve to ~0.01 bits/code
# (the per-map spread over sqrt(2,000)) for a fifth of the two passes' time, about 7% of the default's stage 3
CURVE_MAPS = 2000
CODE_FILES = ("train_codes.npy", "test_codes.npy", "train_labels.npy", "test_labels.npy")


def fingerprint(cfg: Config) -> dict | None:
    """What stage 3's outputs depend on: the prior settings, the seed and stage 2's files."""
    run_folder = RunFolder(cfg.run_dir())
    codes = {name: run_folder.output_sha(2, name) for name in CODE_FILES}
    if codes["train_codes.npy"] is None:
        return None
    return {"prior": cfg.prior.model_dump(mode="json"), "seed": cfg.run.seed, "codes": codes}


def prior_step(
    forward, model, codes: torch.Tensor, labels: torch.Tensor | None, keep: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Cross-entropy of one batch of code maps. `forward` is the prior, or its DDP wrapper; `keep` [B, 1] marks
    the maps that keep their class (the rest learn without it, the all-zero null condition that classifier-free
    guidance needs). The labels were range-checked when stage 2's files were read, so nothing here reads a value
    back to the host or branches on one (tests compile it with fullgraph=True)."""
    cond = model.condition(labels, codes.shape[0], check=False)
    if cond is not None and keep is not None:
        cond = cond * keep
    return {"loss": model.training_loss(forward, codes, cond)}  # a float class vector is a soft label


def run(cfg: Config, reporter: Reporter = Reporter(), resume: str = "auto", rt: Runtime | None = None) -> Path:
    started = time.perf_counter()
    rt = rt or Runtime.setup(cfg.run)
    rt.seed_all()
    device = rt.device
    run_folder = RunFolder(cfg.run_dir())
    folder, manifest = run_folder.read_stage(2, needed_by=3)  # also refuses codes of a replaced stage-1 VQ-VAE
    train_codes, train_labels = load_code_maps(folder, manifest, "train").tensors(device)
    test_codes, test_labels = load_code_maps(folder, manifest, "test").tensors(device)
    conditional = cfg.prior.conditional and train_labels is not None
    class_names = manifest["class_names"] if conditional else None
    if not conditional:
        train_labels = test_labels = None
    grid = tuple(manifest["grid"])

    resolved = components.resolve(
        cfg.prior.network,
        codebook_size=manifest["codebook_size"],
        num_classes=len(class_names) if conditional else 0,
        grid=list(grid),  # only kinds whose constructor takes it (the masked kind) get it
    )
    model = components.instantiate(resolved)
    check_prior(model, resolved["target"], grid)
    model.to(device)
    vq = load_vqvae(run_folder, needed_by=3, device=device)  # only to show each epoch's samples as images
    if (vq.model.quantizer.codebook_size, tuple(vq.grid)) != (manifest["codebook_size"], grid):
        raise UserError(
            f"stage 2's manifest says K={manifest['codebook_size']} on a {grid[0]}x{grid[1]} grid but the stage-1 VQ-VAE has "
            f"K={vq.model.quantizer.codebook_size} on {vq.grid[0]}x{vq.grid[1]}; run `vqprior run-stage 2` again"
        )
    ema = WeightEMA(model, cfg.prior.ema_decay) if cfg.prior.ema_decay else None
    final = ema.module if ema is not None else model  # what is evaluated, sampled from and saved as the prior's weights
    batch = cfg.prior.batch_size
    # the Trainer comes last: resuming restores the random generators, nothing may draw from them after it
    trainer = Trainer(
        stage=3,
        runtime=rt,
        checkpoint=run_folder.checkpoint(3),
        fingerprint={**fingerprint(cfg), "batch_size": batch},
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=scaled_lr(cfg.prior.lr, batch)),
        n_items=len(train_codes),
        batch_size=batch,
        epochs=cfg.prior.epochs,
        checkpoint_every=cfg.run.checkpoint_every,
        resume=resume,
        reporter=reporter,
        lr_key="prior.lr",
        warmup_examples=200 * 128,
        extra_state={"ema": ema} if ema is not None else None,
    )
    progress = ProgressWriter(run_folder, 3, trainer.epoch, rt.is_main, cfg.run.tensorboard)
    grid_labels = torch.arange(model.num_classes).repeat_interleave(GRID_PER_CLASS) if conditional else None
    n_params = sum(p.numel() for p in model.parameters())
    what = f"conditional on {len(class_names)} classes" if conditional else "unconditional"
    reporter.log(
        f"stage 3: prior {resolved['target'].rpartition(':')[2]} ({n_params / 1e6:.2f}M parameters, {what}) on "
        f"{len(train_codes)} {grid[0]}x{grid[1]} maps, {describe(rt, batch)}"
    )
    forward = maybe_compile(prior_step, rt.compile, reporter, "prior step")

    def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        # drawn for the whole global batch on every process, so the same maps lose their class whatever the world size
        keep = torch.rand(len(idx), 1, device=device) >= cfg.prior.label_dropout if cfg.prior.label_dropout else None
        idx = trainer.shard(idx)
        labels = None if train_labels is None else train_labels[idx]
        return forward(trainer.module, model, train_codes[idx], labels, None if keep is None else trainer.shard(keep))

    def evaluate(epoch: int, row: dict) -> None:
        # in the training precision: under bf16 the two test passes take 3 s instead of 6 s per epoch and move the
        # default's 169.9 bits/map by 0.01; `vqprior eval` measures the likelihood again in fp32
        with rt.autocast():
            _evaluate(epoch, row)

    def _evaluate(epoch: int, row: dict) -> None:
        positions = grid[0] * grid[1]
        last = epoch == cfg.prior.epochs
        n = len(test_codes) if last else CURVE_MAPS
        codes, labels = test_codes[:n], None if test_labels is None else test_labels[:n]
        row["test_maps"] = len(codes)
        if final.parallel:  # its exact likelihood costs a pass per position: every epoch the masked loss, then both
            row["train_masked_bits_per_code"] = row["train_loss"] / 0.6931471805599453
            row["test_masked_bits_per_code"] = masked_bits_per_code(final, codes, labels)
            if ema is not None:
                row["test_masked_bits_per_code_without_ema"] = masked_bits_per_code(model, codes, labels)
            line = (
                f"  epoch {epoch}/{cfg.prior.epochs}: hidden codes: train {row['train_masked_bits_per_code']:.3f} | "
                f"test {row['test_masked_bits_per_code']:.3f} bits/code"
            )
            if last:
                row["test_bits_per_code"] = nll_bits_per_code(final, test_codes, test_labels)
                row["test_bits_per_map"] = row["test_bits_per_code"] * positions
                line += f" | raster likelihood: test {row['test_bits_per_code']:.3f} bits/code = {row['test_bits_per_map']:.1f} bits/map"
            reporter.log(line + f" | {row['train_seconds']:.0f}s")
            return
        row["train_bits_per_code"] = row["train_loss"] / 0.6931471805599453
        row["test_bits_per_code"] = nll_bits_per_code(final, codes, labels)
        row["test_bits_per_map"] = row["test_bits_per_code"] * positions
        if ema is not None:
            row["test_bits_per_code_without_ema"] = nll_bits_per_code(model, codes, labels)
        reporter.log(
            f"  epoch {epoch}/{cfg.prior.epochs}: train {row['train_bits_per_code']:.3f} | test"
            + ("" if len(codes) == len(test_codes) else f" ({len(codes):,} maps)")
            + f" {row['test_bits_per_code']:.3f} "
            f"bits/code = {row['test_bits_per_map']:.1f} bits/map"
            + (f" (last weights {row['test_bits_per_code_without_ema']:.3f})" if ema is not None else "")
            + f" | {row['train_seconds']:.0f}s"
        )

    def picture(epoch: int, row: dict) -> None:
        # the same seed and labels every epoch: the GIF shows the same digits taking shape
        count = len(grid_labels) if grid_labels is not None else GRID_PER_CLASS * GRID_PER_CLASS
        codes = sample(final, count, grid, grid_labels, 1.0, seed=0)
        images = to_float(decode_images(vq.model, codes))
        progress.picture(epoch, images, GRID_PER_CLASS)
        progress.log(row)

    history = trainer.fit(step, [evaluate, picture], after_step=[lambda: ema.update(model)] if ema is not None else [])

    if rt.is_main:
        with run_folder.writing_stage(3) as out:
            save_weights(out / WEIGHTS[3], final)
            if ema is not None:
                save_weights(out / "prior_last.safetensors", model)
            save_json(
                out / CONFIG,
                {
                    "prior": resolved,
                    "grid": list(grid),
                    "class_names": class_names,
                    "config": cfg.model_dump(mode="json"),
                },
            )
            save_json(out / METRICS, {"epochs": history, "final": history[-1]})
            progress.finish(out, "samples.gif")
            inputs = {Path(name).stem: folder / name for name in CODE_FILES if (folder / name).is_file()}
            inputs["vqvae"] = vq.weights
            run_folder.write_manifest(
                out,
                3,
                inputs,
                cfg.model_dump(mode="json"),
                {"total": time.perf_counter() - started},
                fingerprint(cfg),
                {"codebook_size": manifest["codebook_size"]},
            )
        trainer.finish()
        progress.cleanup()
    rt.barrier()
    return run_folder.stage(3)
