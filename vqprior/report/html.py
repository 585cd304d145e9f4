"""`<run>/report.html`: one self-contained page (images embedded) about a run, from its artifacts."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from ..artifacts import STAGE_NAMES, versions
from . import plots


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _picture(path: Path, caption: str, scale: int = 2) -> dict | None:
    if not path.is_file():
        return None
    with Image.open(path) as img:
        width = img.size[0]
    mime = "image/gif" if path.suffix == ".gif" else "image/png"
    return {"data": base64.b64encode(path.read_bytes()).decode(), "mime": mime, "caption": caption, "width": width * scale}


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    env = Environment(loader=PackageLoader("vqprior.report", "."), autoescape=select_autoescape(["html", "j2"]))
    s1, s3 = _load(run_dir / "stage1" / "metrics.json"), _load(run_dir / "stage3" / "metrics.json")
    evaluation = _load(run_dir / "eval" / "eval.json")

    pictures = [
        _picture(run_dir / "eval" / "samples.png", "Samples scored by vqprior eval: one row per class"),
        _picture(run_dir / "stage4" / "samples.png", "Stage 4 samples (one row per requested class)"),
        _picture(run_dir / "stage3" / "samples.gif", "The same seed and labels after each epoch of stage 3"),
        _picture(run_dir / "stage1" / "reconstructions.png", "Test digits (odd rows) and their reconstructions (even rows)"),
        _picture(run_dir / "stage1" / "reconstructions.gif", "Reconstructions after each epoch of stage 1"),
    ]
    figures = []
    if s1:
        figures.append({"caption": "Stage 1: reconstruction error; codebook perplexity on the right",
                        "data": plots.curves(s1["epochs"], {"train_recon_loss": "train loss", "test_recon_mse": "test MSE"},
                                             "VQ-VAE", "reconstruction loss", right={"test_perplexity": "test perplexity"})})
    if s3:
        figures.append({"caption": "Stage 3: negative log-likelihood of the codes (test with the EMA weights and with the last weights)",
                        "data": plots.curves(s3["epochs"], {"train_bits_per_code": "train", "test_bits_per_code": "test",
                                                            "test_bits_per_code_without_ema": "test, last weights"},
                                             "prior", "bits per code")})
    codes = run_dir / "stage2" / "train_codes.npy"
    manifest2 = _load(run_dir / "stage2" / "manifest.json")
    if codes.is_file() and manifest2:
        counts = np.bincount(np.load(codes, mmap_mode="r").ravel(), minlength=manifest2["codebook_size"])
        figures.append({"caption": "How often each code is used in the training code maps",
                        "data": plots.code_usage_histogram(counts, f"codebook usage (K={manifest2['codebook_size']})")})
    for fig in figures:
        fig["data"] = base64.b64encode(fig["data"]).decode()

    stages, config = [], None
    for stage in (1, 2, 3, 4):
        m = _load(run_dir / f"stage{stage}" / "manifest.json")
        if m:
            stages.append({"stage": stage, "what": STAGE_NAMES[stage], "seconds": f"{m['timings_s'].get('total', 0):.0f} s",
                           "created": m["created"]})
            config = m["config"]
    html = env.get_template("report.html.j2").render(
        name=run_dir.name, folder=str(run_dir), written=time.strftime("%Y-%m-%d %H:%M"), versions=versions(),
        eval=evaluation, pictures=[p for p in pictures if p], plots=figures, stages=stages,
        config=json.dumps(config, indent=2) if config else "(no finished stage)")
    path = run_dir / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(html)
    tmp.replace(path)
    return path
