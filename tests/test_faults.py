"""A full disk, a dead writer, a read-only folder: one line, nothing half-written, and the run resumes to the same result."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_args
from faults import fill, remount_readonly, small_disk
from typer.testing import CliRunner

from vqprior import artifacts
from vqprior.cli import app
from vqprior.errors import DiskFull

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def reference(finished_tiny_run):
    """An undisturbed run: what every disturbed one must end with."""
    return finished_tiny_run


def one_error_line(result, text):
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and text.lower() in lines[0].lower(), result.output
    assert "Traceback" not in result.output


def no_leftovers(run_dir):
    assert not [p.name for p in run_dir.glob(".stage*")] and not (run_dir / ".lock").exists()


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "weights.safetensors")


@pytest.mark.parametrize("stage,weights", [(1, "vqvae.safetensors"), (3, "prior.safetensors")])
def test_disk_full_while_a_training_stage_writes_keeps_the_training_and_resumes(
    reference, tmp_path, monkeypatch, stage, weights
):
    run_dir = tmp_path / "t"
    if stage == 3:
        for s in (1, 2):
            shutil.copytree(reference / f"stage{s}", run_dir / f"stage{s}")
    with monkeypatch.context() as m:
        write = artifacts.write_bytes_atomic

        def full_for_weights(path, data):  # the disk fills up as the weights are written
            return enospc() if str(path).endswith(".safetensors") else write(path, data)

        m.setattr(artifacts, "write_bytes_atomic", full_for_weights)
        one_error_line(invoke("run-stage", stage, *tiny_args(tmp_path)), "no space left on device")
    no_leftovers(run_dir)
    assert not (run_dir / f"stage{stage}").exists() and (run_dir / ".checkpoints" / f"stage{stage}.pt").is_file()
    again = invoke("run", *tiny_args(tmp_path), "--per-class", 1)
    assert again.exit_code == 0 and f"stage {stage}: resuming from epoch 2" in again.output, again.output
    assert (run_dir / f"stage{stage}" / weights).read_bytes() == (reference / f"stage{stage}" / weights).read_bytes()
    assert not (run_dir / ".checkpoints").exists()


def test_disk_full_before_stage_2_maps_its_files_is_one_line(reference, tmp_path, monkeypatch):
    run_dir = tmp_path / "t"
    shutil.copytree(reference / "stage1", run_dir / "stage1")
    monkeypatch.setattr(
        os,
        "posix_fallocate",
        lambda fd, off, n: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")),
    )
    one_error_line(invoke("run-stage", 2, *tiny_args(tmp_path)), "no space left on device while writing")
    no_leftovers(run_dir)
    assert not (run_dir / "stage2").exists()


def test_a_real_full_filesystem_refuses_stage_2_up_front_and_leaves_nothing(reference, tmp_path):
    with small_disk(tmp_path / "disk", 2048) as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs needs root")
        run_dir = disk / "t"
        shutil.copytree(reference / "stage1", run_dir / "stage1")
        fill(disk, 300)  # stage 2's maps would fit, with no room to spare: refused before any memory map is written
        result = subprocess.run(
            [sys.executable, "-m", "vqprior", "run-stage", "2", *tiny_args(disk)], capture_output=True, text=True
        )
        assert (
            result.returncode == 2 and "no space left on device" in result.stderr and "Traceback" not in result.stderr
        ), result.stderr
        assert [line.startswith("error:") for line in result.stderr.strip().splitlines()] == [
            False,
            True,
        ]  # progress, error
        assert f"writing {run_dir / 'stage2'} " in result.stderr
        no_leftovers(run_dir)


def test_an_atomic_write_on_a_full_filesystem_leaves_the_old_file_and_no_partial_one(tmp_path):
    with small_disk(tmp_path / "disk", 1024) as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs needs root")
        target = disk / "checkpoint.pt"
        artifacts.write_bytes_atomic(target, b"old" * 1000)
        with pytest.raises(DiskFull, match="no space left on device while writing"):
            artifacts.write_bytes_atomic(target, b"x" * (2 << 20))
        assert target.read_bytes() == b"old" * 1000 and sorted(p.name for p in disk.iterdir()) == ["checkpoint.pt"]


def test_report_on_a_read_only_folder_is_one_line(reference, tmp_path):
    with small_disk(tmp_path / "disk", 4096) as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs needs root")
        shutil.copytree(reference, disk / "t")
        if not remount_readonly(disk):
            pytest.skip("cannot remount read-only")
        for args in (["report"], ["score", "--from", "test", "--n", "3", "--device", "cpu"]):
            one_error_line(invoke(*args, "--name", "t", "--out-dir", disk), "read-only file system")


def test_killed_writers_leave_temporary_folders_that_the_next_run_removes(reference, tmp_path):
    run_dir = tmp_path / "t"
    shutil.copytree(reference, run_dir)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    leftovers = [
        run_dir / f".stage2.tmp-{dead}",
        run_dir / f".stage4.old-{dead}",
        run_dir / ".checkpoints" / f".stage3.pt.{dead}.tmp",
    ]
    for p in leftovers[:2]:
        (p / "sub").mkdir(parents=True)
    leftovers[2].parent.mkdir()
    leftovers[2].write_bytes(b"partial")
    alive = run_dir / f".stage4.tmp-{os.getppid()}"  # a live process's folder is not touched
    alive.mkdir()
    assert invoke("run", *tiny_args(tmp_path), "--per-class", 1).exit_code == 0
    assert not any(p.exists() for p in leftovers) and alive.is_dir()


def test_disk_full_while_training_fills_progress_files_is_one_line_and_resumable(reference, tmp_path):
    with small_disk(tmp_path / "disk", 8192) as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs needs root")
        filler = fill(disk, 8)  # 8 KiB left: the first picture or checkpoint does not fit
        result = subprocess.run(
            [sys.executable, "-m", "vqprior", "run", *tiny_args(disk), "--per-class", "1"],
            capture_output=True,
            text=True,
        )
        assert (
            result.returncode == 2 and "no space left on device" in result.stderr and "Traceback" not in result.stderr
        ), result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error:")
        no_leftovers(disk / "t")
        filler.unlink()
        again = subprocess.run(
            [sys.executable, "-m", "vqprior", "run", *tiny_args(disk), "--per-class", "1"],
            capture_output=True,
            text=True,
        )
        assert again.returncode == 0, again.stderr
        for stage, name in ((1, "vqvae.safetensors"), (3, "prior.safetensors")):
            assert (disk / "t" / f"stage{stage}" / name).read_bytes() == (
                reference / f"stage{stage}" / name
            ).read_bytes(), name
        assert np.array_equal(
            np.load(disk / "t" / "stage4" / "samples.npz")["images"],
            np.load(reference / "stage4" / "samples.npz")["images"],
        )
