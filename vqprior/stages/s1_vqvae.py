"""Stage 1: train the VQ-VAE (encoder, codebook, decoder) on the training images."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from vqprior.artifacts import load_weights, save_json, save_weights
from vqprior.config import Config
from vqprior.datasets import load_split, to_float, training_split
from vqprior.errors import UserError
from vqprior.evaluation import reconstruction_metrics
from vqprior.models.quantizer import code_usage, degenerate_code
from vqprior.models.vqvae import VQVAE, build_vqvae
from vqprior.optimizer import scaled_lr
from vqprior.report.progress import ProgressWriter
from vqprior.reporter import Reporter
from vqprior.run_folder import CONFIG, METRICS, WEIGHTS, RunFolder
from vqprior.runtime import Runtime, describe
from vqprior.runtime.compile import maybe_compile
from vqprior.training import Trainer


def fingerprint(cfg: Config) -> dict:
    """What stage 1's outputs depend on."""
    return {"data": cfg.data.fingerprint(), "vqvae": cfg.vqvae.fingerprint(), "seed": cfg.run.seed}


def _load_component_weights(model: VQVAE, cfg: Config) -> None:
    for part, spec in (("encoder", cfg.vqvae.encoder), ("decoder", cfg.vqvae.decoder)):
        module = getattr(model, part)
        if spec.weights:
            load_weights(Path(spec.weights), module)
        if not spec.trainable:
            module.requires_grad_(False)


def _reconstruction_grid(model: VQVAE, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, int]:
    """Rows alternate: up to 16 test originals, then their reconstructions (two pairs of rows when there are 32)."""
    per_row = min(16, len(images))
    n_rows = 2 if len(images) >= 32 else 1
    x = to_float(images[: per_row * n_rows]).to(device)
    with torch.no_grad():
        model.eval()
        recon = model.reconstruct(x)
        model.train()
    shape = x.shape[1:]
    return torch.stack([x.view(n_rows, per_row, *shape), recon.view(n_rows, per_row, *shape)], 1).flatten(
        0, 2
    ).cpu(), per_row


def vqvae_step(forward, model: VQVAE, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss and code counts of one batch of uint8 images. `forward` is the model, or its DDP wrapper. No value is
    read back to the host and nothing branches on one (tests compile it with fullgraph=True)."""
    x = to_float(images)
    out, codes, commitment = forward(x)
    rec = model.reconstruction_loss(out.float(), x)
    counts = (codes.reshape(-1, 1) == torch.arange(model.quantizer.codebook_size, device=codes.device)).sum(0)
    return {"loss": rec + commitment, "recon_loss": rec, "code_counts": counts}


def run(cfg: Config, reporter: Reporter = Reporter(), resume: str = "auto", rt: Runtime | None = None) -> Path:
    started = time.perf_counter()
    rt = rt or Runtime.setup(cfg.run)
    rt.seed_all()
    device = rt.device
    run_folder = RunFolder(cfg.run_dir())
    train, test = training_split(cfg.data), load_split(cfg.data, "test")
    image_shape = tuple(train.images.shape[1:])
    if tuple(test.images.shape[1:]) != image_shape:
        raise UserError(
            f"train images are {list(image_shape)} but test images are {list(test.images.shape[1:])}; make both splits the same size"
        )
    model, constructor = build_vqvae(cfg.vqvae, image_shape)
    _load_component_weights(model, cfg)
    model.to(device)
    model.quantizer.sync = rt.collectives  # under torchrun: EMA statistics and dead-code picks over every process
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("nothing to train: encoder and decoder both have trainable = false; unfreeze the decoder")
    k = model.quantizer.codebook_size
    batch = cfg.vqvae.batch_size
    trainer = Trainer(
        stage=1,
        runtime=rt,
        checkpoint=run_folder.checkpoint(1),
        fingerprint={**fingerprint(cfg), "batch_size": batch},
        model=model,
        optimizer=torch.optim.Adam(params, lr=scaled_lr(cfg.vqvae.lr, batch)),
        n_items=len(train),
        batch_size=batch,
        epochs=cfg.vqvae.epochs,
        checkpoint_every=cfg.run.checkpoint_every,
        resume=resume,
        reporter=reporter,
        lr_key="vqvae.lr",
        warmup_examples=100 * 128,
    )
    progress = ProgressWriter(run_folder, 1, trainer.epoch, rt.is_main, cfg.run.tensorboard)
    for split, data in (("train", train), ("test", test)):
        if data.skipped:
            reporter.log(
                f"[yellow]warning:[/] skipped {data.skipped} unreadable file(s) in the {split} split (data.strict=true makes this an error)"
            )
        for notice in data.notices:
            reporter.log(f"[yellow]notice:[/] {notice}")
    grid = model.grid
    reporter.log(
        f"stage 1: VQ-VAE on {len(train)} images {list(image_shape)} -> {grid[0]}x{grid[1]} codes, K={k}, "
        f"{describe(rt, batch)}"
    )
    if train.class_names:
        counts = torch.bincount(train.labels, minlength=len(train.class_names)).tolist()
        reporter.log(
            f"  classes (index name: training images): "
            f"{', '.join(f'{i} {n}: {c}' for i, (n, c) in enumerate(zip(train.class_names, counts)))}; "
            f"--label takes a name or an index"
        )
    else:
        reporter.log("  no classes (images without class subfolders): the prior will be unconditional")
    images = train.images.to(device)  # uint8 on the training device: a step indexes it there, no host copy
    forward = maybe_compile(vqvae_step, rt.compile, reporter, "VQ-VAE step")

    def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return forward(trainer.module, model, images[trainer.shard(idx)])

    def evaluate(epoch: int, row: dict) -> None:
        usage = code_usage(trainer.sums["code_counts"].cpu())
        row.update({"train_perplexity": usage["perplexity"], "train_usage": usage["usage"]})
        row.update({f"test_{name}": v for name, v in reconstruction_metrics(model, test, device).items()})
        reporter.log(
            f"  epoch {epoch}/{cfg.vqvae.epochs}: train {cfg.vqvae.likelihood} {row['train_recon_loss']:.4f} | test mse {row['test_recon_mse']:.4f}"
            f" | codes used {row['test_usage']:.0%} of {k}, perplexity {row['test_perplexity']:.1f} | {row['train_seconds']:.0f}s"
        )
        progress.picture(epoch, *_reconstruction_grid(model, test.images, device))
        progress.log(row)

    history = trainer.fit(step, [evaluate])
    warning = degenerate_code(history[-1]["test_usage"], history[-1]["test_perplexity"], k, cfg.data.source)
    if warning:
        reporter.log(f"[yellow]warning:[/] {warning}")
    pairs, per_row = _reconstruction_grid(model, test.images, device)

    if rt.is_main:
        with run_folder.writing_stage(1) as out:
            save_weights(out / WEIGHTS[1], model)
            save_json(
                out / CONFIG,
                {
                    "vqvae": constructor,
                    "data": cfg.data.model_dump(mode="json"),
                    "class_names": train.class_names,
                    "config": cfg.model_dump(mode="json"),
                },
            )
            save_json(out / METRICS, {"epochs": history, "final": history[-1]})
            save_image(pairs, out / "reconstructions.png", nrow=per_row, padding=2, pad_value=0.5)
            progress.finish(out, "reconstructions.gif")
            run_folder.write_manifest(
                out,
                1,
                {},
                cfg.model_dump(mode="json"),
                {"total": time.perf_counter() - started},
                fingerprint(cfg),
                {"data": {"source": cfg.data.source, "train": len(train), "test": len(test)}},
            )
        trainer.finish()
        progress.cleanup()
    rt.barrier()
    return run_folder.stage(1)
