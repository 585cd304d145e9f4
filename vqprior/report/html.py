"""`<run>/report.html`: one self-contained page (images embedded) about a run, from its artifacts."""

from __future__ import annotations

import base64
import io
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from ..artifacts import load_json_object, read_regular, versions, write_bytes_atomic
from ..codes import codes_manifest
from ..errors import UserError
from ..run_folder import EVAL_JSON, EVAL_SHEET, STAGE_NAMES, RunFolder, as_run_folder
from . import plots

MAX_PICTURE_BYTES = 32 << 20


def _load(path: Path, skipped: list[str]):
    """A JSON object the report shows, or None (missing, or unreadable: then named in the report's notes)."""
    if not os.path.lexists(path):
        return None
    try:
        return load_json_object(path)
    except UserError as e:
        skipped.append(str(e))
        return None


def _picture(path: Path, caption: str, skipped: list[str], scale: int = 2) -> dict | None:
    """A picture of the run's own (a regular file inside it, a PNG or GIF that decodes), embedded; else None."""
    if not os.path.lexists(path):
        return None
    try:
        data = read_regular(path, MAX_PICTURE_BYTES)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format not in ("PNG", "GIF"):
                    raise ValueError(f"a {img.format} file, not a PNG or GIF")
                width = img.size[0]
                img.verify()
    except UserError as e:
        skipped.append(str(e))
        return None
    except Exception as e:  # noqa: BLE001 - any undecodable picture is left out of the report, named in its notes
        skipped.append(f"{path} is not a readable picture ({type(e).__name__}); re-run the stage that wrote it")
        return None
    mime = "image/gif" if path.suffix == ".gif" else "image/png"
    return {"data": base64.b64encode(data).decode(), "mime": mime, "caption": caption, "width": width * scale}


def write_report(run_dir: RunFolder | Path, eval_dir: Path | None = None) -> Path:
    """Write <run>/report.html (atomically); `eval_dir` is an evaluation folder not yet in place (vqprior eval
    renders the report before it replaces the previous evaluation, so a failure keeps both old ones)."""
    run = as_run_folder(run_dir)
    run.check()
    html = render_report(run, eval_dir or run.eval)
    write_bytes_atomic(run.report, html.encode())
    return run.report


def render_report(run: RunFolder, eval_dir: Path) -> str:
    env = Environment(loader=PackageLoader("vqprior.report", "."), autoescape=select_autoescape(["html", "j2"]))
    skipped: list[str] = []
    s1, s3 = _load(run.metrics_file(1), skipped), _load(run.metrics_file(3), skipped)
    evaluation = _load(eval_dir / EVAL_JSON, skipped)

    pictures = [
        _picture(eval_dir / EVAL_SHEET, "Samples scored by vqprior eval: one row per class", skipped),
        _picture(run.stage(4) / "samples.png", "Stage 4 samples (one row per requested class)", skipped),
        _picture(run.stage(4) / "morph.png", "Stage 4 morph strips: one class turning into another", skipped),
        _picture(run.stage(4) / "morph.gif", "The morph, step by step", skipped),
        _picture(run.stage(3) / "samples.gif", "The same seed and labels after each epoch of stage 3", skipped),
        _picture(
            run.stage(1) / "reconstructions.png",
            "Test digits (odd rows) and their reconstructions (even rows)",
            skipped,
        ),
        _picture(run.stage(1) / "reconstructions.gif", "Reconstructions after each epoch of stage 1", skipped),
    ]
    figures = []
    try:
        _figures(run, s1, s3, figures, skipped)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        skipped.append(
            f"the training curves could not be drawn from the metrics files ({type(e).__name__}: {e}); re-run stage 1 or 3"
        )
    for fig in figures:
        fig["data"] = base64.b64encode(fig["data"]).decode()

    stages, config = [], None
    for stage in (1, 2, 3, 4):
        m = _load(run.manifest_file(stage), skipped)
        if m:
            timings = m.get("timings_s") if isinstance(m.get("timings_s"), dict) else {}
            total = timings.get("total", 0)
            stages.append(
                {
                    "stage": stage,
                    "what": STAGE_NAMES[stage],
                    "seconds": f"{total:.0f} s" if isinstance(total, (int, float)) else "?",
                    "created": str(m.get("created", "?")),
                }
            )
            config = m.get("config")
    if evaluation is not None and not (
        isinstance(evaluation.get("samples"), dict) and isinstance(evaluation.get("spaces"), dict)
    ):
        skipped.append(f"{eval_dir / EVAL_JSON} is not an evaluation result of this version; run `vqprior eval` again")
        evaluation = None
    results = [r for r in run.evaluations(eval_dir).values() if isinstance(r.get("samples"), dict)]
    page = {
        "name": run.path.name,
        "folder": str(run.path),
        "written": time.strftime("%Y-%m-%d %H:%M"),
        "versions": versions(),
        "pictures": [p for p in pictures if p],
        "plots": figures,
        "stages": stages,
        "skipped": skipped,
        "config": json.dumps(config, indent=2) if config else "(no finished stage)",
    }
    template = env.get_template("report.html.j2")
    try:
        return template.render(eval=evaluation, results=results, **page)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # an eval.json of the wrong shape
        if evaluation is None:
            raise
        skipped.append(f"{eval_dir / EVAL_JSON} could not be shown ({type(e).__name__}); run `vqprior eval` again")
        return template.render(eval=None, results=[], **page)


def _figures(run: RunFolder, s1, s3, figures: list, skipped: list[str]) -> None:
    if s1:
        figures.append(
            {
                "caption": "Stage 1: the training loss (left) and the test reconstruction MSE (right), each on its own axis",
                "data": plots.curves(
                    s1["epochs"],
                    {"train_recon_loss": "train loss"},
                    "VQ-VAE",
                    "train reconstruction loss",
                    right={"test_recon_mse": "test MSE"},
                ),
            }
        )
        figures.append(
            {
                "caption": "Stage 1: codebook perplexity on the test split (the effective number of codes in use)",
                "data": plots.curves(s1["epochs"], {"test_perplexity": "test perplexity"}, "codebook", "perplexity"),
            }
        )
    if s3:
        figures.append(
            {
                "caption": "Stage 3: negative log-likelihood of the codes (test with the EMA weights and with the last "
                "weights; on the first 2,000 test maps each epoch but the last, which uses them all)"
                if not any("test_masked_bits_per_code" in row for row in s3["epochs"])
                else "Stage 3: cross-entropy of the hidden codes, the masked kind's training loss (its likelihood is "
                "measured once, at the end)",
                "data": plots.curves(
                    s3["epochs"],
                    {
                        "train_bits_per_code": "train",
                        "test_bits_per_code": "test",
                        "test_bits_per_code_without_ema": "test, last weights",
                        # the masked kind: its training objective every epoch (its likelihood only at the end)
                        "train_masked_bits_per_code": "train, hidden codes",
                        "test_masked_bits_per_code": "test, hidden codes",
                        "test_masked_bits_per_code_without_ema": "test, hidden codes, last weights",
                    },
                    "prior",
                    "bits per code",
                ),
            }
        )
    codes = run.stage(2) / "train_codes.npy"
    manifest2 = _load(run.manifest_file(2), skipped)
    if os.path.isfile(codes) and not os.path.islink(codes) and manifest2:
        try:
            k = codes_manifest(manifest2, run.stage(2)).codebook_size  # validated: a forged K of 1e12 is refused
        except UserError as e:
            skipped.append(str(e))
            return
        counts = np.bincount(np.load(codes, mmap_mode="r", allow_pickle=False).ravel(), minlength=k)
        figures.append(
            {
                "caption": "How often each code is used in the training code maps",
                "data": plots.code_usage_histogram(counts, f"codebook usage (K={k})"),
            }
        )
