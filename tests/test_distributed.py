"""The stages under torchrun (CPU, gloo, 2 processes): same artifacts as one process, resumable across world sizes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_args
from safetensors.torch import load_file
from typer.testing import CliRunner

from vqprior.cli import app

pytestmark = pytest.mark.slow  # every test here starts torchrun jobs
runner = CliRunner()
# small enough for seconds, big enough that a batch splits in two and dead codes get re-seeded
EXTRA = [
    "--set",
    "data.train_limit=256",
    "--set",
    "vqvae.batch_size=32",
    "--set",
    "prior.batch_size=32",
    "--set",
    "prior.ema_decay=0.9",
]


def torchrun(out, *args, nproc=2, name="t", last=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "vqprior",
        *map(str, args),
        *tiny_args(out, name),
        *EXTRA,
        *last,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def single(out, *args, name="t"):
    result = runner.invoke(app, [*map(str, args), *tiny_args(out, name), *EXTRA], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The four stages once under torchrun with 2 processes and once in this process."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    for stage in (1, 2, 3, 4):
        result = torchrun(two, "run-stage", stage)
        assert result.returncode == 0, result.stderr[-3000:]
        single(one, "run-stage", stage)
    return two / "t", one / "t"


def test_two_processes_write_the_artifacts_of_one(both):
    two, one = both
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        assert sorted(p.name for p in (two / stage).iterdir()) == sorted(p.name for p in (one / stage).iterdir())
    assert not (two / ".lock").exists() and not list(two.glob(".stage*"))


@pytest.mark.parametrize(
    "stage,file,tolerance",
    [
        # float32: a nearest-code choice that flips on the last bit moves the VQ-VAE by ~1e-3 of a tensor's scale
        ("stage1", "vqvae.safetensors", 5e-3),
        ("stage3", "prior.safetensors", 1e-5),
        ("stage3", "prior_last.safetensors", 1e-5),
    ],
)
def test_two_processes_train_the_weights_of_one(both, stage, file, tolerance):
    # the same global batches, the same dead-code re-seeding and label dropout: equal up to float summation order
    a, b = load_file(str(both[0] / stage / file)), load_file(str(both[1] / stage / file))
    for k in a:
        if a[k].is_floating_point():
            scale = b[k].abs().max().clamp_min(1e-6)
            assert (a[k] - b[k]).abs().max() <= tolerance * scale, k


def test_stage_2_on_two_processes_writes_the_codes_of_one(both, tmp_path):
    # encode with the single-process VQ-VAE on 2 processes: the codes must be identical
    import shutil

    shutil.copytree(both[1] / "stage1", tmp_path / "t" / "stage1")
    result = torchrun(tmp_path, "run-stage", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    for split in ("train", "test"):
        assert np.array_equal(
            np.load(tmp_path / "t" / "stage2" / f"{split}_codes.npy"),
            np.load(both[1] / "stage2" / f"{split}_codes.npy"),
        )


def test_stage_4_on_two_processes_draws_the_images_of_one(both, tmp_path):
    import shutil

    for stage in ("stage1", "stage2", "stage3"):
        shutil.copytree(both[1] / stage, tmp_path / "t" / stage)
    result = torchrun(
        tmp_path, "run-stage", 4, "--set", "sample.per_class=70"
    )  # 700 maps: 14 noise blocks over 2 processes
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(tmp_path / "t", tmp_path / "solo" / "t", ignore=shutil.ignore_patterns("stage4"))
    single(tmp_path / "solo", "run-stage", 4, "--per-class", 70)
    a = np.load(tmp_path / "t" / "stage4" / "samples.npz")["images"]
    b = np.load(tmp_path / "solo" / "t" / "stage4" / "samples.npz")["images"]
    assert a.shape == (700, 1, 28, 28) and np.array_equal(a, b)


def test_batch_that_does_not_divide_among_processes_is_one_line(tmp_path):
    result = torchrun(tmp_path, "run-stage", 1, last=["--set", "vqvae.batch_size=33"])
    assert result.returncode != 0 and "does not divide among 2 processes" in result.stderr


def test_interrupted_two_process_stage_3_resumes_in_one(both, tmp_path):
    import shutil
    import signal
    import time

    for stage in ("stage1", "stage2"):
        shutil.copytree(both[0] / stage, tmp_path / "t" / stage)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "vqprior",
        "run-stage",
        "3",
        *tiny_args(tmp_path, "t"),
        *EXTRA,
        "--set",
        "prior.epochs=40",
        "--set",
        "run.checkpoint_every=2",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    ckpt = tmp_path / "t" / ".checkpoints" / "stage3.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert ckpt.exists(), proc.communicate()[1][-3000:]
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches every process of the group
    _, err = proc.communicate(timeout=120)
    assert "checkpoint saved" in err, err[-3000:]
    result = runner.invoke(
        app,
        [
            "run-stage",
            "3",
            *tiny_args(tmp_path, "t"),
            *EXTRA,
            "--set",
            "prior.epochs=40",
            "--set",
            "run.checkpoint_every=2",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0 and "resuming from epoch" in " ".join(result.output.split()), result.output
    assert (tmp_path / "t" / "stage3" / "prior.safetensors").is_file()


# ------------------------------------------------------------------ two torchrun "nodes" on this machine, and faults


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(out, *args, port: int, last=(), nnodes: int = 2, ranks=(0, 1), join_timeout: int = 10):
    """One torchrun launcher per "node" (--nnodes=2, one process each), c10d rendezvous on 127.0.0.1: what two
    machines would run. Returns the launchers (started, not waited for)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nnodes={nnodes}",
                "--nproc-per-node=1",
                f"--node-rank={r}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=vq",
                f"--rdzv-conf=join_timeout={join_timeout}",
                "-m",
                "vqprior",
                *map(str, args),
                *tiny_args(out),
                *EXTRA,
                *last,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        for r in ranks
    ]


def finish(procs, timeout: float):
    """(return code, stderr) of each launcher; a launcher still running after `timeout` s is killed and fails the test."""
    import signal
    import time

    deadline, results = time.monotonic() + timeout, []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                with __import__("contextlib").suppress(ProcessLookupError):
                    os.killpg(q.pid, signal.SIGKILL)
            pytest.fail(f"a torchrun launcher was still running after {timeout} s (a hang)")
        results.append((p.returncode, err))
    return results


def test_two_nodes_run_the_pipeline_to_the_results_of_one_process(both, tmp_path):
    results = finish(two_nodes(tmp_path, "run", port=free_port(), last=["--per-class", "1"]), timeout=240)
    assert all(code == 0 for code, _ in results), results[0][1][-3000:] + results[1][1][-3000:]
    run_dir = tmp_path / "t"
    for stage, file, tolerance in (("stage1", "vqvae.safetensors", 5e-3), ("stage3", "prior.safetensors", 1e-5)):
        a, b = load_file(str(run_dir / stage / file)), load_file(str(both[1] / stage / file))
        for k in a:
            if a[k].is_floating_point():
                assert (a[k] - b[k]).abs().max() <= tolerance * b[k].abs().max().clamp_min(1e-6), k
    assert (run_dir / "stage4" / "samples.png").is_file() and not (run_dir / ".lock").exists()


def test_a_rank_killed_during_stage_3_stops_every_rank_with_one_line_and_the_run_resumes(both, tmp_path):
    import signal
    import time

    for stage in ("stage1", "stage2"):
        import shutil

        shutil.copytree(both[1] / stage, tmp_path / "t" / stage)
    long = ["--set", "prior.epochs=8", "--set", "run.checkpoint_every=2", "--set", "run.timeout_s=60"]
    procs = two_nodes(tmp_path, "run-stage", 3, port=free_port(), last=long)
    ckpt = tmp_path / "t" / ".checkpoints" / "stage3.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.1)
    assert ckpt.exists(), procs[0].communicate()[1][-3000:]
    time.sleep(0.5)
    worker = int(open(f"/proc/{procs[1].pid}/task/{procs[1].pid}/children").read().split()[0])  # node 1's rank
    os.kill(worker, signal.SIGKILL)
    started = time.monotonic()
    results = finish(procs, timeout=120)
    print(f"every rank stopped {time.monotonic() - started:.1f} s after the kill")
    assert time.monotonic() - started < 90
    assert all(code != 0 for code, _ in results)
    errors = [line for line in results[0][1].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "[rank 0] lost contact with another torchrun process" in errors[0], results[0][1][
        -3000:
    ]
    assert not (tmp_path / "t" / "stage3").exists() and ckpt.is_file()
    # the same job started again resumes from the last checkpoint and ends bitwise where an undisturbed job ends
    again = finish(two_nodes(tmp_path, "run-stage", 3, port=free_port(), last=long), timeout=180)
    assert all(code == 0 for code, _ in again) and "resuming from epoch" in " ".join(again[0][1].split()), again[0][1][
        -3000:
    ]
    reference = tmp_path / "ref"
    for stage in ("stage1", "stage2"):
        shutil.copytree(both[1] / stage, reference / "t" / stage)
    assert all(
        code == 0 for code, _ in finish(two_nodes(reference, "run-stage", 3, port=free_port(), last=long), timeout=180)
    )
    for name in ("prior.safetensors", "prior_last.safetensors"):
        assert (tmp_path / "t" / "stage3" / name).read_bytes() == (reference / "t" / "stage3" / name).read_bytes(), name


def test_a_rank_that_cannot_join_is_one_line(tmp_path):
    # a job for three nodes of which only two come: the rendezvous gives up after its join timeout
    nodes = two_nodes(tmp_path / "nodes", "run-stage", 1, port=free_port(), nnodes=3, join_timeout=4)
    # meanwhile WORLD_SIZE claims a peer that never starts: this process waits run.timeout_s at most, then says so in
    # one line
    env = {
        **os.environ,
        "RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-m", "vqprior", "run-stage", "1", *tiny_args(tmp_path), "--set", "run.timeout_s=10"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.count("error:") == 1 and "could not join" in result.stderr, (
        result.stderr[-2000:]
    )
    assert all(code != 0 for code, _ in finish(nodes, timeout=120))


def test_a_taken_process_group_port_is_one_line(tmp_path):
    import socket

    with socket.socket() as holder:  # another program holds MASTER_PORT
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(holder.getsockname()[1])}  # fmt: skip
        result = subprocess.run([sys.executable, "-m", "vqprior", "run-stage", "1", *tiny_args(tmp_path)],
                                capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("error:") == 1 and "address already in use" in result.stderr
    assert "Traceback" not in result.stderr
