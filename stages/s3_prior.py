"""Stage 3: train the gated PixelCNN prior on stage 2's code maps (class-conditional when they have labels)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vqprior.artifacts import read_stage, save_json, save_weights, write_manifest, writing_stage
from vqprior.config import Config
from vqprior.data import load_code_maps
from vqprior.models.pixelcnn import GatedPixelCNN
from vqprior.runtime import Reporter, batches, cosine_schedule, setup
from vqprior.training import ResumableLoop

EVAL_BATCH = 1000
LN2 = math.log(2)


def _tensors(maps, device):
    codes = torch.from_numpy(np.asarray(maps.codes).astype(np.int64)).to(device)
    labels = None if maps.labels is None else torch.from_numpy(np.asarray(maps.labels)).to(device)
    return codes, labels


@torch.no_grad()
def evaluate_nll(model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | None) -> float:
    """Mean negative log-likelihood in bits per code."""
    model.eval()
    total = 0.0
    for idx in batches(len(codes), EVAL_BATCH):
        logits = model(codes[idx], None if labels is None else labels[idx])
        total += float(F.cross_entropy(logits, codes[idx], reduction="sum"))
    model.train()
    return total / codes.numel() / LN2


def run(cfg: Config, reporter: Reporter = Reporter(), resume: str = "auto") -> Path:
    started = time.perf_counter()
    device = setup(cfg.run)
    folder, manifest = read_stage(cfg.run_dir(), 2, needed_by=3)
    train_maps, test_maps = (load_code_maps(folder, manifest, s) for s in ("train", "test"))
    conditional = cfg.prior.conditional and train_maps.labels is not None
    class_names = manifest["class_names"] if conditional else None
    params = {"codebook_size": manifest["codebook_size"], "channels": cfg.prior.channels, "layers": cfg.prior.layers,
              "kernel": cfg.prior.kernel, "num_classes": len(class_names) if conditional else 0}
    model = GatedPixelCNN(**params).to(device).train()
    train_codes, train_labels = _tensors(train_maps, device)
    test_codes, test_labels = _tensors(test_maps, device)
    if not conditional:
        train_labels = test_labels = None
    grid = tuple(manifest["grid"])
    positions = grid[0] * grid[1]

    opt = torch.optim.Adam(model.parameters(), lr=cfg.prior.lr)
    steps_per_epoch = -(-len(train_codes) // cfg.prior.batch_size)
    sched = cosine_schedule(opt, cfg.prior.epochs * steps_per_epoch, warmup_steps=min(200, steps_per_epoch))
    fingerprint = {"prior": cfg.prior.model_dump(mode="json"), "codes": manifest["outputs"]["train_codes.npy"], "seed": cfg.run.seed}
    loop = ResumableLoop(3, cfg.run_dir(), fingerprint, {"model": model, "optimizer": opt, "scheduler": sched}, len(train_codes),
                         cfg.prior.batch_size, cfg.prior.epochs, cfg.run.seed, cfg.run.checkpoint_every, resume, reporter, "prior.lr")
    n_params = sum(p.numel() for p in model.parameters())
    reporter.log(f"stage 3: gated PixelCNN ({cfg.prior.layers} layers, {cfg.prior.channels} channels, {n_params / 1e6:.2f}M parameters, "
                 f"{'conditional on ' + str(len(class_names)) + ' classes' if conditional else 'unconditional'}) on {len(train_codes)} "
                 f"{grid[0]}x{grid[1]} maps, device {device}")

    for epoch in loop.epochs():
        t0 = time.perf_counter()
        acc = loop.accumulators({"nats": torch.zeros((), dtype=torch.float64, device=device), "n_batches": 0})
        for idx in loop.batches("stage 3 epoch"):
            x = train_codes[idx]
            loss = F.cross_entropy(model(x, None if train_labels is None else train_labels[idx]), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            acc["nats"] += loss.detach()
            acc["n_batches"] += 1
        test_bits = evaluate_nll(model, test_codes, test_labels)
        row = {"epoch": epoch, "train_bits_per_code": acc["nats"].item() / acc["n_batches"] / LN2, "test_bits_per_code": test_bits,
               "test_bits_per_map": test_bits * positions, "seconds": time.perf_counter() - t0}
        loop.end_epoch(row)
        reporter.log(f"  epoch {epoch}/{cfg.prior.epochs}: train {row['train_bits_per_code']:.3f} | test {test_bits:.3f} bits/code"
                     f" = {row['test_bits_per_map']:.1f} bits/map | {row['seconds']:.0f}s")
    history = loop.history

    with writing_stage(cfg.run_dir(), 3) as out:
        save_weights(out / "prior.safetensors", model)
        save_json(out / "config.json", {"model": params, "grid": list(grid), "class_names": class_names,
                                        "config": cfg.model_dump(mode="json")})
        save_json(out / "metrics.json", {"epochs": history, "final": history[-1]})
        inputs = {f"{s}_codes": folder / f"{s}_codes.npy" for s in ("train", "test")}
        write_manifest(out, 3, inputs, cfg.model_dump(mode="json"), {"total": time.perf_counter() - started},
                       {"vqvae_sha256": manifest["inputs"]["vqvae"]["sha256"], "codebook_size": params["codebook_size"]})
    loop.finish()
    return cfg.run_dir() / "stage3"
