"""`python -m vqprior.pretrained RUN_DIR --command "..."`: pack a finished, evaluated MNIST run and the cached
feature networks into the package (what `make pretrained` does after `vqprior run` and `vqprior eval`)."""

from __future__ import annotations

import argparse
import platform
import shutil
from pathlib import Path

from . import HERE, pack

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--command", required=True, help="the command that made the run, recorded as it was typed")
    ap.add_argument("--yardstick", required=True, help="bench/yardstick.py's line from the same session")
    ap.add_argument("--seconds", type=float, help="wall time of that command")
    args = ap.parse_args()
    from ..artifacts import versions
    from ..datasets.mnist import cache_dir
    from ..run_folder import RunFolder

    run = RunFolder(args.run_dir)
    stage1 = run.manifest(1)
    record = {
        "command": args.command,
        "seed": stage1["config"]["run"]["seed"],
        "versions": versions(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}; {args.yardstick}",
        "wall_seconds": args.seconds,
        "stage_seconds": {s: run.manifest(s)["timings_s"]["total"] for s in (1, 2, 3, 4)},
    }
    dest = pack(args.run_dir, HERE / "mnist", record)
    nets = HERE / "feature_nets"
    nets.mkdir(exist_ok=True)
    from ..datasets import load_split, split_holdout
    from ..evaluation.classifier import SPACES, data_fingerprint

    fit, _ = split_holdout(load_split(run.data(), "train"))
    key = data_fingerprint(fit)[:24]
    for space in SPACES:
        for suffix in (".safetensors", ".json"):
            shutil.copy2(cache_dir() / "classifiers" / f"{key}-{space}{suffix}", nets / f"{key}-{space}{suffix}")
    print(f"packed {args.run_dir} -> {dest} and the feature networks -> {nets}")
