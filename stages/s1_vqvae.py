"""Stage 1: train the VQ-VAE (encoder, codebook, decoder) on the training images."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from vqprior.artifacts import load_weights, save_json, save_weights, write_manifest, writing_stage
from vqprior.config import Config
from vqprior.errors import UserError
from vqprior.data import ImageSet, load_split, to_float
from vqprior.models.quantizer import code_usage
from vqprior.models.vqvae import VQVAE, build_vqvae
from vqprior.runtime import Reporter, batches, cosine_schedule, setup
from vqprior.training import ResumableLoop

EVAL_BATCH = 1000


@torch.no_grad()
def evaluate(model: VQVAE, data: ImageSet, device: torch.device) -> dict[str, float]:
    """Reconstruction MSE (pixels in [0, 1]) and code usage on a split."""
    model.eval()
    k = model.quantizer.codebook_size
    counts = torch.zeros(k, dtype=torch.long, device=device)
    sq_err, pixels = 0.0, 0
    for idx in batches(len(data), EVAL_BATCH):
        x = to_float(data.images[idx]).to(device)
        recon, codes, _ = model(x)
        sq_err += float(F.mse_loss(recon.clamp(0, 1), x, reduction="sum"))
        pixels += x.numel()
        counts += torch.bincount(codes.flatten(), minlength=k)
    model.train()
    return {"recon_mse": sq_err / pixels, **code_usage(counts.cpu())}


def load_component_weights(model: VQVAE, cfg: Config) -> None:
    for part, spec in (("encoder", cfg.vqvae.encoder), ("decoder", cfg.vqvae.decoder)):
        module = getattr(model, part)
        if spec.weights:
            load_weights(Path(spec.weights), module)
        if not spec.trainable:
            module.requires_grad_(False)


def run(cfg: Config, reporter: Reporter = Reporter(), resume: str = "auto") -> Path:
    started = time.perf_counter()
    device = setup(cfg.run)
    train, test = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    image_shape = tuple(train.images.shape[1:])
    if tuple(test.images.shape[1:]) != image_shape:
        raise UserError(f"train images are {list(image_shape)} but test images are {list(test.images.shape[1:])}; make both splits the same size")
    model, grid = build_vqvae(cfg.vqvae, image_shape)
    load_component_weights(model, cfg)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("nothing to train: encoder and decoder both have trainable = false; unfreeze the decoder")
    opt = torch.optim.Adam(params, lr=cfg.vqvae.lr)
    steps_per_epoch = -(-len(train) // cfg.vqvae.batch_size)
    sched = cosine_schedule(opt, cfg.vqvae.epochs * steps_per_epoch, warmup_steps=min(100, steps_per_epoch))
    k = cfg.vqvae.codebook_size
    # a checkpoint is only resumed by a run with the same data, model and training settings
    fingerprint = {"data": cfg.data.model_dump(mode="json"), "vqvae": cfg.vqvae.model_dump(mode="json"), "seed": cfg.run.seed}
    loop = ResumableLoop(1, cfg.run_dir(), fingerprint, {"model": model, "optimizer": opt, "scheduler": sched}, len(train),
                         cfg.vqvae.batch_size, cfg.vqvae.epochs, cfg.run.seed, cfg.run.checkpoint_every, resume, reporter, "vqvae.lr")
    for split, data in (("train", train), ("test", test)):
        if data.skipped:
            reporter.log(f"[yellow]warning:[/] skipped {data.skipped} unreadable file(s) in the {split} split (data.strict=true makes this an error)")
    reporter.log(f"stage 1: VQ-VAE on {len(train)} images {list(image_shape)} -> {grid[0]}x{grid[1]} codes, K={k}, device {device}")

    for epoch in loop.epochs():
        t0 = time.perf_counter()
        acc = loop.accumulators({"counts": torch.zeros(k, dtype=torch.long, device=device),
                                 "loss_sum": torch.zeros((), dtype=torch.float64, device=device),
                                 "rec_sum": torch.zeros((), dtype=torch.float64, device=device), "n_batches": 0})
        for idx in loop.batches("stage 1 epoch"):
            x = to_float(train.images[idx]).to(device, non_blocking=True)
            recon, codes, commitment = model(x)
            rec = F.mse_loss(recon, x)
            loss = rec + commitment
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            acc["counts"] += torch.bincount(codes.flatten(), minlength=k)
            acc["loss_sum"] += loss.detach()
            acc["rec_sum"] += rec.detach()
            acc["n_batches"] += 1
        train_usage = code_usage(acc["counts"].cpu())
        test_metrics = evaluate(model, test, device)
        row = {"epoch": epoch, "train_recon_mse": acc["rec_sum"].item() / acc["n_batches"], "train_perplexity": train_usage["perplexity"],
               "train_usage": train_usage["usage"], **{f"test_{k_}": v for k_, v in test_metrics.items()},
               "seconds": time.perf_counter() - t0}
        loop.end_epoch(row)
        reporter.log(f"  epoch {epoch}/{cfg.vqvae.epochs}: train mse {row['train_recon_mse']:.4f} | test mse {row['test_recon_mse']:.4f}"
                     f" | codes used {row['test_usage']:.0%} of {k}, perplexity {row['test_perplexity']:.1f} | {row['seconds']:.0f}s")
    history = loop.history

    model.eval()
    per_row = min(16, len(test))
    n_rows = 2 if len(test) >= 32 else 1
    with torch.no_grad():
        x = to_float(test.images[: per_row * n_rows]).to(device)
        recon = model(x)[0].clamp(0, 1)
    # rows alternate: originals, their reconstructions
    pairs = torch.stack([x.view(n_rows, per_row, *image_shape), recon.view(n_rows, per_row, *image_shape)], 1).flatten(0, 2)

    with writing_stage(cfg.run_dir(), 1) as out:
        save_weights(out / "vqvae.safetensors", model)
        save_json(out / "config.json", {"config": cfg.model_dump(mode="json"), "image_shape": list(image_shape), "grid": list(grid),
                                        "class_names": train.class_names})
        save_json(out / "metrics.json", {"epochs": history, "final": history[-1]})
        save_image(pairs.cpu(), out / "reconstructions.png", nrow=per_row, padding=2, pad_value=0.5)
        write_manifest(out, 1, {}, cfg.model_dump(mode="json"), {"total": time.perf_counter() - started},
                       {"data": {"source": cfg.data.source, "train": len(train), "test": len(test)}})
    loop.finish()
    return cfg.run_dir() / "stage1"
