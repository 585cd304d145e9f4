"""Own data measured: MNIST written out as a folder of 32x32 RGB PNGs under English class names, then the
default pipeline on it against the default pipeline on MNIST itself, in one session, with the yardstick.

    .venv/bin/python bench/own_data.py [--out /tmp/vqprior-own-data] [--train 60000] [--test 10000]

The folder is what a user brings: `digits/train/seven/00042.png`, `digits/test/...` (the held-out split);
it trains with exactly the README's command (`vqprior run --set data.source=folder --set data.root=...
--set data.image_size=32`) and is evaluated by `vqprior eval`, both as subprocesses, timed by wall clock.
Nothing else should run on the machine meanwhile (the two runs together take ~40 min on 2 cores).

Targets (issue 38): the folder run's worst-space FD / floor within 1.25x of the MNIST run's, at <= 1.5x its
wall time (run + eval). Each run is one seed: training seeds alone move the ratio by about +-0.2x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from vqprior.datasets.mnist import load_mnist_offline  # noqa: E402
from vqprior.run_folder import RunFolder  # noqa: E402

NAMES = "zero one two three four five six seven eight nine".split()


def write_folder(root: Path, train: int, test: int) -> int:
    """MNIST's first `train` training and `test` test digits as 32x32 RGB PNGs, one folder per class name.
    Returns the number of files written (0 when the folder is already complete)."""
    stamp = root / f".complete-{train}-{test}"
    if stamp.exists():
        return 0
    written = 0
    for split, count in (("train", train), ("test", test)):
        data = load_mnist_offline(split)
        images, labels = data.images[:count, 0].numpy(), data.labels[:count].numpy()
        for name in NAMES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (pixels, label) in enumerate(zip(images, labels)):
            img = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).resize((32, 32), Image.BICUBIC).convert("RGB")
            img.save(root / split / NAMES[int(label)] / f"{i:05d}.png")
            written += 1
    stamp.touch()
    return written


def yardstick() -> str:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "yardstick.py")], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def timed_run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc:
        sys.exit(f"{' '.join(cmd)} failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def pipeline(name: str, out_dir: Path, sets: list[str], eval_args: list[str]) -> dict:
    vqprior = str(Path(sys.executable).parent / "vqprior")
    run_cmd = [vqprior, "run", "--name", name, "--out-dir", str(out_dir), *sets]
    eval_cmd = [vqprior, "eval", "--name", name, "--out-dir", str(out_dir), *eval_args]
    print("$ " + " ".join(run_cmd), flush=True)
    run_s = timed_run(run_cmd, out_dir / f"{name}-run.log")
    print("$ " + " ".join(eval_cmd), flush=True)
    eval_s = timed_run(eval_cmd, out_dir / f"{name}-eval.log")
    result = json.loads(RunFolder(out_dir / name).eval_json.read_text())
    samples = result["samples"]
    row = {
        "name": name,
        "command": " ".join(run_cmd),
        "run_s": run_s,
        "eval_s": eval_s,
        "eval_feature_net_training_s": result["seconds"] - result["seconds_without_classifier_training"],
        "worst_ratio": samples["fd_ratio"],
        "worst_space": samples["worst_space"],
        "ratio_by_space": samples["fd_ratio_by_space"],
        "conditional_accuracy": samples.get("conditional_accuracy"),
        "recall": samples.get("recall"),
        "reference_accuracy": {k: v["test_accuracy"] for k, v in result["feature_nets"].items()},
        "n_samples": result["n_samples"],
        "verdict": result["verdict"],
    }
    spaces = ", ".join(f"{k} {v:.2f}x" for k, v in row["ratio_by_space"].items())
    print(
        f"  {name}: run {run_s:,.0f} s, eval {eval_s:,.0f} s (of which training its feature networks "
        f"{row['eval_feature_net_training_s']:,.0f} s, once per dataset); worst {row['worst_ratio']:.2f}x ({spaces}); "
        f"class accuracy {row['conditional_accuracy']:.1%}; comparable: {row['verdict']['comparable']}",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/vqprior-own-data"))
    ap.add_argument("--train", type=int, default=60_000, help="training digits written to the folder")
    ap.add_argument("--test", type=int, default=10_000, help="held-out digits written to the folder")
    ap.add_argument("--skip-mnist", action="store_true", help="only the folder run (no comparison)")
    ap.add_argument("--eval-n", type=int, default=None, help="samples per eval (default: eval's own)")
    ap.add_argument("--set", action="append", default=[], help="extra --set for both runs (smoke tests)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.out / "digits"
    t0 = time.perf_counter()
    written = write_folder(folder, args.train, args.test)
    print(f"folder {folder}: {written:,} PNGs written in {time.perf_counter() - t0:.0f} s (not timed below)")
    before = yardstick()
    print(before, flush=True)
    extra = [a for s in args.set for a in ("--set", s)]
    eval_args = ["--n", str(args.eval_n)] if args.eval_n else []
    artifacts = args.out / "artifacts"
    artifacts.mkdir(exist_ok=True)
    folder_sets = ["--set", "data.source=folder", "--set", f"data.root={folder}", "--set", "data.image_size=32"]
    rows = [pipeline("digits", artifacts, folder_sets + extra, eval_args)]
    if not args.skip_mnist:
        rows.append(pipeline("mnist", artifacts, extra, eval_args))
    after = yardstick()
    print(after)
    report = {"yardstick_before": before, "yardstick_after": after, "runs": rows}
    if len(rows) == 2:
        own, mnist = rows
        quality = own["worst_ratio"] / mnist["worst_ratio"]
        wall = (own["run_s"] + own["eval_s"]) / (mnist["run_s"] + mnist["eval_s"])
        again = (own["run_s"] + own["eval_s"] - own["eval_feature_net_training_s"]) / (
            mnist["run_s"] + mnist["eval_s"] - mnist["eval_feature_net_training_s"]
        )
        report["quality_vs_mnist"], report["wall_vs_mnist"], report["wall_vs_mnist_nets_cached"] = quality, wall, again
        print(
            f"folder / MNIST: worst-space ratio {quality:.2f}x (target <= 1.25x: {'met' if quality <= 1.25 else 'MISSED'}), "
            f"wall {wall:.2f}x (target <= 1.5x: {'met' if wall <= 1.5 else 'MISSED'}; "
            f"{again:.2f}x once its feature networks are cached)"
        )
    (args.out / "own_data.json").write_text(json.dumps(report, indent=2))
    print(f"figures: {args.out / 'own_data.json'}")


if __name__ == "__main__":
    main()
