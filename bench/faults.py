"""A tiny pipeline under injected faults, and whether `vqprior run` then ends where an undisturbed run ends.

    .venv/bin/python bench/faults.py [--kills 2] [--seed 0]

Faults: the disk fills up at each stage (a small tmpfs, filled to a few KiB; needs root), SIGKILL at random points
of each stage (every stage's wall time measured first), a read-only run folder (tmpfs remounted read-only), and
the distributed path on this machine: two torchrun "nodes" (one process each, c10d rendezvous on 127.0.0.1), one
rank SIGKILLed during stage 3 (the others must stop within --rank-timeout seconds with one line, and the job
started again must end bitwise where an undisturbed two-node job ends), a job for three nodes of which two come,
and a rendezvous port that is taken.
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

from vqprior.run_folder import RunFolder  # noqa: E402

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
        run, ref = RunFolder(run_dir), RunFolder(reference)
        for stage in (1, 3):
            if run.weights(stage).read_bytes() != ref.weights(stage).read_bytes():
                return False
        return np.array_equal(
            np.load(run.stage(4) / "samples.npz")["images"], np.load(ref.stage(4) / "samples.npz")["images"]
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(out: Path, *args: str, port: int, nnodes: int = 2, extra=()) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", "--nproc-per-node=1", f"--node-rank={r}",
             "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=faults", "--rdzv-conf=join_timeout=10",
             "-m", "vqprior", *args, *tiny_args(out), *EXTRA, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        )
        for r in range(2)
    ]  # fmt: skip


def wait_all(procs: list[subprocess.Popen], timeout: float) -> tuple[list[subprocess.CompletedProcess], bool]:
    """(each launcher's result, whether all ended within `timeout` s); any still running then is killed."""
    deadline, results, in_time = time.monotonic() + timeout, [], True
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            in_time = False
            os.killpg(p.pid, signal.SIGKILL)
            _, err = p.communicate()
        results.append(subprocess.CompletedProcess(p.args, p.returncode, "", err))
    return results, in_time


def distributed_faults(work: Path, rank_timeout: float) -> list[bool]:
    good = []
    ref_out = work / "dist-reference"
    results, _ = wait_all(two_nodes(ref_out, "run", port=free_port()), 600)
    if any(r.returncode for r in results):
        print(f"two nodes: the undisturbed job failed: {last_line(results[0])}")
        return [False]
    reference = ref_out / "t"
    # one rank killed during stage 3: every rank must stop in time with one line; the job again ends bitwise the same
    out = work / "dist-kill"
    copy_stages(reference, out / "t", 3)
    long = ["--set", "prior.epochs=6"]
    procs = two_nodes(out, "run-stage", "3", port=free_port(), extra=long)
    ckpt = RunFolder(out / "t").checkpoint(3)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    killed = time.monotonic()
    worker = int(open(f"/proc/{procs[1].pid}/task/{procs[1].pid}/children").read().split()[0])
    os.kill(worker, signal.SIGKILL)
    results, in_time = wait_all(procs, rank_timeout)
    stopped = time.monotonic() - killed
    errors = [line for line in results[0].stderr.splitlines() if line.startswith("error:")]
    left = leftovers(out / "t")
    ref_long = work / "dist-reference-long"
    copy_stages(reference, ref_long / "t", 3)
    wait_all(two_nodes(ref_long, "run-stage", "3", port=free_port(), extra=long), 600)
    again, _ = wait_all(two_nodes(out, "run-stage", "3", port=free_port(), extra=long), 600)
    resumed, whole = RunFolder(out / "t").stage(3), RunFolder(ref_long / "t").stage(3)
    weights = sorted(p.name for p in whole.glob("*.safetensors"))
    same = (
        bool(weights)
        and all(r.returncode == 0 for r in again)
        and all((resumed / n).is_file() and (resumed / n).read_bytes() == (whole / n).read_bytes() for n in weights)
    )
    ok = in_time and len(errors) == 1 and "lost contact" in errors[0] and same and left in ([], ["stage3.pt"])
    print(f"{'SIGKILL of rank 1 (2 nodes), stage 3':34s} | every rank stopped {stopped:.1f}s after the kill "
          f"(limit {rank_timeout:.0f}s) | {errors[0][:150] if errors else 'no error line'}")  # fmt: skip
    print(f"{'':34s} | left behind: {', '.join(x for x in left if x != 'stage3.pt') or 'nothing'} (the checkpoint kept) "
          f"| the job again: {'bitwise the undisturbed job' if same else 'DIFFERENT or failed'}")  # fmt: skip
    good.append(ok)
    # a job for three nodes of which two come (torchrun's rendezvous gives up after its join timeout)
    t0 = time.monotonic()
    results, in_time = wait_all(two_nodes(work / "dist-join", "run-stage", "1", port=free_port(), nnodes=3), 120)
    print(f"{'a node that never comes (3 of 2)':34s} | every launcher ended in {time.monotonic() - t0:.0f}s, exit "
          f"{[r.returncode for r in results]} | {last_line(results[0])[:150]}")  # fmt: skip
    good.append(in_time and all(r.returncode != 0 for r in results))
    # the process group's port is taken (MASTER_PORT held by another program): vqprior's own join, one line
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(holder.getsockname()[1])}  # fmt: skip
        t0 = time.monotonic()
        result = vqprior(work / "dist-port", "run-stage", "1", env=env, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    print(f"{'process-group port taken':34s} | exit {result.returncode} after {time.monotonic() - t0:.0f}s | "
          f"{errors[0][:150] if errors else last_line(result)[:150]}")  # fmt: skip
    good.append(result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr)
    return good


def copy_stages(reference: Path, run_dir: Path, below: int) -> None:
    for s in range(1, below):
        shutil.copytree(RunFolder(reference).stage(s), RunFolder(run_dir).stage(s))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=2, help="SIGKILLs per stage, at random points")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rank-timeout", type=float, default=60, help="seconds the ranks may take to stop after one dies")
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
            shutil.rmtree(RunFolder(disk / "t").stage(4))
            if remount_readonly(disk):
                result = vqprior(disk, "run")
                left = leftovers(disk / "t")
                subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
                good.append(report("read-only run folder", result, left, vqprior(disk, "run"), disk / "t", reference))

    print()
    good.extend(distributed_faults(work, args.rank_timeout))

    shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{sum(good)} of {len(good)} faults: one line (or killed), nothing half-written left, same results after `vqprior run`"
    )
    return 0 if all(good) else 1


if __name__ == "__main__":
    sys.exit(main())
