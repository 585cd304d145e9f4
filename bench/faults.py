"""A tiny pipeline under injected faults, and whether `vqprior run` then ends where an undisturbed run ends.

    .venv/bin/python bench/faults.py [--kills 2] [--seed 0]

Faults: the disk fills up at each stage (a small tmpfs, filled to a few KiB; needs root), SIGKILL at random points
of each stage (every stage's wall time measured first), a read-only run folder (tmpfs remounted read-only).
One line per fault: the last line the command printed, its exit code, what was left half-written (temporary
folders, a lock, partial files), and whether `vqprior run` afterwards (space freed, folder writable again)
finished with bitwise the same VQ-VAE and prior weights and the same sample images as the undisturbed run.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import tiny_args  # noqa: E402
from faults import fill, remount_readonly, small_disk  # noqa: E402

EXTRA = ["--set", "sample.per_class=1", "--set", "run.checkpoint_every=2", "--set", "data.train_limit=3000"]


def vqprior(out: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vqprior", *args, *tiny_args(out), *EXTRA]
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def leftovers(run_dir: Path) -> list[str]:
    if not run_dir.is_dir():
        return []
    found = [p.name for p in run_dir.iterdir() if p.name.startswith(".stage") or p.name == ".lock"]
    found += [p.name for p in run_dir.rglob("*.tmp")]
    return sorted(found)


def same_as(run_dir: Path, reference: Path) -> bool:
    try:
        for stage, name in ((1, "vqvae.safetensors"), (3, "prior.safetensors")):
            if (run_dir / f"stage{stage}" / name).read_bytes() != (reference / f"stage{stage}" / name).read_bytes():
                return False
        return np.array_equal(
            np.load(run_dir / "stage4" / "samples.npz")["images"],
            np.load(reference / "stage4" / "samples.npz")["images"],
        )
    except FileNotFoundError:
        return False


def last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(nothing)"


def report(
    fault: str, result, left: list[str], after: subprocess.CompletedProcess, run_dir: Path, reference: Path
) -> bool:
    ok = after.returncode == 0 and same_as(run_dir, reference) and not leftovers(run_dir)
    traceback = "Traceback" in result.stderr
    print(f"{fault:34s} | exit {result.returncode:>4} | {'TRACEBACK ' if traceback else ''}{last_line(result)[:150]}")
    print(
        f"{'':34s} | left behind: {', '.join(left) or 'nothing'} | then `vqprior run`: exit {after.returncode}, "
        f"{'same results as undisturbed' if ok else 'DIFFERENT or incomplete'}"
    )
    return ok and not traceback


def copy_stages(reference: Path, run_dir: Path, below: int) -> None:
    for s in range(1, below):
        shutil.copytree(reference / f"stage{s}", run_dir / f"stage{s}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=2, help="SIGKILLs per stage, at random points")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="vqprior-faults-"))
    os.environ.setdefault("VQPRIOR_CACHE", str(work / "cache"))
    good = []

    reference_out = work / "reference"
    durations = {}
    for stage in (1, 2, 3, 4):
        t0 = time.perf_counter()
        assert vqprior(reference_out, "run-stage", str(stage)).returncode == 0
        durations[stage] = time.perf_counter() - t0
    reference = reference_out / "t"
    print(
        f"undisturbed run: stage wall times {', '.join(f'{s}: {d:.1f}s' for s, d in durations.items())} (imports included)\n"
    )

    for stage in (1, 2, 3, 4):
        with small_disk(work / f"disk{stage}", 16384) as disk:
            if disk is None:
                print("disk full: skipped (mounting a tmpfs needs root)")
                break
            copy_stages(reference, disk / "t", stage)
            filler = fill(disk, 4)
            result = vqprior(disk, "run")
            left = leftovers(disk / "t")
            filler.unlink()
            good.append(
                report(f"disk full from stage {stage} on", result, left, vqprior(disk, "run"), disk / "t", reference)
            )

    for stage in (1, 2, 3, 4):
        for k in range(args.kills):
            out = work / f"kill{stage}-{k}"
            copy_stages(reference, out / "t", stage)
            delay = rng.uniform(0.3, 1.0) * durations[stage]
            proc = subprocess.Popen(
                [sys.executable, "-m", "vqprior", "run-stage", str(stage), *tiny_args(out), *EXTRA],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
            result = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
            left = leftovers(out / "t")
            good.append(
                report(
                    f"SIGKILL in stage {stage} at {delay:.1f}s", result, left, vqprior(out, "run"), out / "t", reference
                )
            )

    with small_disk(work / "ro", 65536) as disk:
        if disk is not None:
            shutil.copytree(reference, disk / "t")
            shutil.rmtree(disk / "t" / "stage4")
            if remount_readonly(disk):
                result = vqprior(disk, "run")
                left = leftovers(disk / "t")
                subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
                good.append(report("read-only run folder", result, left, vqprior(disk, "run"), disk / "t", reference))

    shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{sum(good)} of {len(good)} faults: one line (or killed), nothing half-written left, same results after `vqprior run`"
    )
    return 0 if all(good) else 1


if __name__ == "__main__":
    sys.exit(main())
