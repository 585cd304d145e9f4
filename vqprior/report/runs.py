"""The runs table: every run folder under an output folder with its headline numbers."""

from __future__ import annotations

import json
from pathlib import Path


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collect_runs(out_dir: Path) -> list[list[str]]:
    rows = []
    for run in sorted(p for p in Path(out_dir).iterdir() if p.is_dir() and (p / "stage1" / "manifest.json").is_file()) if Path(out_dir).is_dir() else []:
        m2 = _load(run / "stage2" / "manifest.json") or {}
        s3 = _load(run / "stage3" / "metrics.json") or {}
        ev = _load(run / "eval" / "eval.json") or {}
        wall = sum((_load(run / f"stage{s}" / "manifest.json") or {}).get("timings_s", {}).get("total", 0) for s in (1, 2, 3, 4))
        samples = ev.get("samples", {})
        rows.append([
            run.name,
            str(m2.get("codebook_size", "-")),
            f"{s3['final']['test_bits_per_map']:.1f}" if s3 else "-",
            f"{samples['fd_ratio']:.2f}x" if "fd_ratio" in samples else "-",
            f"{samples['conditional_accuracy']:.1%}" if "conditional_accuracy" in samples else "-",
            f"{ev['vqvae']['recon_fd_ratio']:.2f}x" if ev else "-",
            f"{wall:.0f} s",
        ])
    return rows
