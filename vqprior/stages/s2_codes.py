"""Stage 2: encode the train and test images with the trained VQ-VAE into code maps (.npy) plus labels."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from vqprior.codes import code_dtype
from vqprior.config import Config
from vqprior.datasets import SPLITS, load_split, to_float, training_split
from vqprior.errors import disk_full, ensure_free
from vqprior.models.quantizer import code_usage, degenerate_code
from vqprior.reporter import Reporter
from vqprior.restore import load_vqvae
from vqprior.run_folder import WEIGHTS, RunFolder
from vqprior.runtime import Runtime, batches

ENCODE_BATCH = 250  # images per encoder pass: 2x faster than 1,000 on 2 CPU cores (cache-sized), the same codes


def create_npy(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """An .npy of zeros whose disk blocks are reserved (posix_fallocate) before anyone writes into it through a
    memory map: a full disk is then an error here, never a SIGBUS in the middle of the writes."""
    np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(path, os.fstat(f.fileno()).st_size) from None
            if e.errno not in (
                errno.EOPNOTSUPP,
                errno.EINVAL,
            ):  # a filesystem without fallocate: the free-space check stands
                raise


def fingerprint(cfg: Config) -> dict | None:
    """Stage 2's outputs depend only on stage 1's weights (and the data stage 1 recorded)."""
    vqvae = RunFolder(cfg.run_dir()).output_sha(1, WEIGHTS[1])
    return None if vqvae is None else {"vqvae": vqvae}


def run(cfg: Config, reporter: Reporter = Reporter(), rt: Runtime | None = None) -> Path:
    started = time.perf_counter()
    rt = rt or Runtime.setup(cfg.run)
    rt.seed_all()
    run_folder = RunFolder(cfg.run_dir())
    vq = load_vqvae(run_folder, needed_by=2, device=rt.device)
    # the data is the one stage 1 trained on, as recorded beside its weights
    data_cfg = run_folder.data()
    k = vq.model.quantizer.codebook_size
    dtype = code_dtype(k)
    reporter.log(
        f"stage 2: encoding with the stage-1 VQ-VAE into {vq.grid[0]}x{vq.grid[1]} maps of {dtype.name} codes (K={k})"
    )

    # under torchrun each process encodes one contiguous slice of every split into the same preallocated .npy
    datasets = {
        split: training_split(data_cfg) if split == "train" else load_split(data_cfg, split) for split in SPLITS
    }
    with run_folder.writing_stage(2) if rt.is_main else contextlib.nullcontext() as out:
        out = Path(rt.share(str(out) if rt.is_main else None))
        if rt.is_main:  # everything stage 2 writes has a known size: refuse up front rather than fail half-way
            ensure_free(
                run_folder.stage(2),
                sum(len(d) * (math.prod(vq.grid) * dtype.itemsize + 8) for d in datasets.values()),
            )
        info: dict[str, dict] = {}
        for split, data in datasets.items():
            path = out / f"{split}_codes.npy"
            if rt.is_main:
                create_npy(path, dtype, (len(data), *vq.grid))
            rt.barrier()
            codes = np.load(path, mmap_mode="r+")
            lo, hi = rt.my_range(len(data))
            with torch.no_grad():
                for idx in reporter.track(
                    batches(hi - lo, ENCODE_BATCH), -(-(hi - lo) // ENCODE_BATCH), f"stage 2 {split}"
                ):
                    idx = idx + lo
                    codes[idx.numpy()] = (
                        vq.model.encode(to_float(data.images[idx]).to(rt.device)).cpu().numpy().astype(dtype)
                    )
            codes.flush()
            del codes
            rt.barrier()
            if rt.is_main:
                written = np.load(path, mmap_mode="r")
                if data.labels is not None:
                    np.save(out / f"{split}_labels.npy", data.labels.numpy().astype(np.int64))
                usage = code_usage(torch.from_numpy(np.bincount(written.ravel(), minlength=k)))
                info[split] = {"count": len(data), "labeled": data.labels is not None, **usage}
                reporter.log(
                    f"  {split}: {len(data)} maps, codes used {usage['usage']:.0%}, perplexity {usage['perplexity']:.1f}"
                )
                warning = degenerate_code(usage["usage"], usage["perplexity"], k, data_cfg.source)
                if warning and split == "train":
                    reporter.log(f"[yellow]warning:[/] {warning}")
        if rt.is_main:
            run_folder.write_manifest(
                out,
                2,
                {"vqvae": vq.weights},
                cfg.model_dump(mode="json"),
                {"total": time.perf_counter() - started},
                fingerprint(cfg),
                {
                    "codebook_size": k,
                    "grid": list(vq.grid),
                    "dtype": dtype.name,
                    "splits": info,
                    "class_names": vq.class_names if info["train"]["labeled"] else None,
                },
            )
    rt.barrier()
    return run_folder.stage(2)
