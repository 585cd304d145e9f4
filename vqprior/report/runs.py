"""The runs table: every run folder under an output folder with its headline numbers."""

from __future__ import annotations

import os
from pathlib import Path
from statistics import median

from .. import guidance
from ..artifacts import load_json_object
from ..errors import UserError
from ..evaluation.verdict import comparable, reasons
from ..models.quantizer import degenerate_code
from ..run_folder import RunFolder


def _load(path: Path) -> dict:
    """A JSON object of the run's, or {} when it is missing or unreadable (the table shows '-' for it)."""
    if not os.path.lexists(path):
        return {}
    try:
        return load_json_object(path)
    except (UserError, OSError):
        return {}


def _number(obj, *keys) -> float | None:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return float(obj) if isinstance(obj, (int, float)) and not isinstance(obj, bool) else None


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def same_setting(latest: dict, kept: dict[str, dict]) -> list[dict]:
    """The kept evaluations at the latest one's setting (reference, n, temperature, guidance), one per sampling seed."""
    key = [latest.get(k) for k in ("reference", "n_samples", "temperature", "guidance")]
    found = {}
    for r in kept.values():
        if [r.get(k) for k in ("reference", "n_samples", "temperature", "guidance")] == key:
            if _number(r, "samples", "fd_ratio") is not None and comparable(r):
                found[r.get("seed")] = r
    return list(found.values())


def collect_runs(out_dir: Path) -> list[list[str]]:
    rows = []
    out_dir = Path(out_dir)
    found = sorted(p for p in out_dir.iterdir() if p.is_dir() and RunFolder(p).finished(1)) if out_dir.is_dir() else []
    for run in map(RunFolder, found):
        try:
            run.check()
        except UserError as e:
            rows.append([run.path.name, "-", "-", "-", "-", "-", "-", "-", f"refused: {e}"])
            continue
        m2, s3, ev = (
            _load(run.manifest_file(2)),
            _load(run.metrics_file(3)),
            _load(run.eval_json),
        )
        wall = sum(_number(_load(run.manifest_file(s)), "timings_s", "total") or 0 for s in (1, 2, 3, 4))
        k = _number(m2, "codebook_size")
        k = k if k is not None and 1 <= k <= 2**32 else None
        usage, perplexity = _number(m2, "splits", "train", "usage"), _number(m2, "splits", "train", "perplexity")
        note = "-"
        if k and usage is not None and perplexity is not None and degenerate_code(usage, perplexity, int(k)):
            note = f"degenerate code ({usage:.0%} of codes used): train stage 1 longer or on more data"
        setting = "-"
        fd, accuracy = _number(ev, "samples", "fd_ratio"), _number(ev, "samples", "conditional_accuracy")
        if ev:
            n, t, g = _number(ev, "n_samples"), _number(ev, "temperature"), guidance.read_label(ev.get("guidance"))
            if None not in (n, t, g):
                seed = _number(ev, "seed")
                setting = f"{n:.0f} · {t:g} · {g} ({ev.get('reference', '?')}, seed {_fmt(seed, '.0f')})"
                seeds = same_setting(ev, run.evaluations())
                if len(seeds) > 1:  # the headline is the median over the sampling seeds kept at this setting
                    fds = sorted(_number(r, "samples", "fd_ratio") for r in seeds)
                    accs = sorted(a for a in (_number(r, "samples", "conditional_accuracy") for r in seeds) if a)
                    fd, accuracy = median(fds), median(accs) if accs else accuracy
                    setting = (
                        f"{n:.0f} · {t:g} · {g} ({ev.get('reference', '?')}, median of {len(seeds)} seeds, "
                        f"{fds[0]:.2f}–{fds[-1]:.2f}x)"
                    )
        fd_text = _fmt(fd, ".2f", "x")
        if ev and not comparable(ev):
            fd_text, note = "not comparable", f"not comparable: {'; '.join(reasons(ev))}"
        rows.append(
            [
                run.path.name,
                _fmt(k, ".0f"),
                _fmt(_number(s3, "final", "test_bits_per_map"), ".1f"),
                fd_text,
                _fmt(accuracy, ".1%"),
                _fmt(_number(ev, "vqvae", "recon_fd_ratio"), ".2f", "x"),
                setting,
                f"{wall:.0f} s",
                note,
            ]
        )
    return rows
