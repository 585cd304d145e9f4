"""Run folder layout and trustworthy artifact I/O.

artifacts/<run>/stage1 .. stage4. A stage writes into a hidden temporary folder and renames it into place
when everything is written, so a crash never leaves a half-written stage under its final name. Each stage
folder has a manifest.json with sha256 fingerprints of what it read and wrote; later stages check them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import UserError, disk_full

STAGE_NAMES = {1: "VQ-VAE", 2: "code maps", 3: "prior", 4: "samples"}
MANIFEST = "manifest.json"


def stage_dir(run_dir: Path, stage: int) -> Path:
    return Path(run_dir) / f"stage{stage}"


@contextlib.contextmanager
def writing_stage(run_dir: Path, stage: int) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces stage<N>, on any error it is removed."""
    with writing_folder(stage_dir(run_dir, stage), f"stage {stage}") as tmp:
        yield tmp


@contextlib.contextmanager
def writing_folder(final: Path, what: str) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `final`; on success it replaces `final`, on any error it is removed."""
    run_dir = Path(final).parent
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".{final.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"cannot write to {run_dir}: {e.strerror}; choose a writable run.out_dir") from None
    try:
        yield tmp
        old = run_dir / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(e.filename or final) from None
        raise


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Only one process writes a run folder at a time: an OS lock (flock) on `<run>/.lock`, released by the
    kernel when its process dies, so a crashed run never leaves a lock that blocks the next one."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {run_dir}: {e.strerror}; choose a writable run.out_dir") from None
    path = run_dir / ".lock"
    fd = _take_lock(path, run_dir)
    try:
        remove_leftovers(run_dir)
        yield
    finally:
        path.unlink(missing_ok=True)  # unlinked while still held: a waiting process re-checks the inode
        os.close(fd)
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves no trace


LEFTOVER = re.compile(r"^\..+\.(?:tmp|old)-(\d+)$|^\..+\.(\d+)\.tmp$")  # .stage2.tmp-<pid>, .stage1.pt.<pid>.tmp, ...


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Remove the temporary files and folders of writers that died (killed, power cut) before cleaning up; the
    caller holds the run lock, so no live writer of this folder can own them. Returns what was removed."""
    removed = []
    for folder in (run_dir, run_dir / ".checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = LEFTOVER.match(p.name)
            if m and not _alive(int(m.group(1) or m.group(2))):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _take_lock(path: Path, run_dir: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:
            raise UserError(f"cannot write to {run_dir}: {e.strerror}; choose a writable run.out_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise UserError(f"run folder {run_dir} is in use by {who}; wait for it to finish or use another --name") from None
        # the holder may have unlinked the file between our open and flock: then we locked a dead inode
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_json(path: Path, obj: Any) -> None:
    """Written whole or not at all (a temporary file renamed into place)."""
    write_bytes_atomic(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`data` at `path`, or a one-line DiskFull and no partial file when the disk fills up."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, len(data)) from None
        raise


def load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"missing file {path}; re-run the stage that writes it") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}); re-run the stage that writes it") from None


def save_weights(path: Path, module: torch.nn.Module) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"vqprior": __version__})


def load_weights(path: Path, module: torch.nn.Module) -> None:
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"missing weights {path}; re-run the stage that writes it") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); re-run the stage that wrote it") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{path} does not fit the model in its config ({first[1].strip() if len(first) > 1 else first[0]}); re-run that stage") from None


def versions() -> dict[str, str]:
    return {"vqprior": __version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def write_manifest(folder: Path, stage: int, inputs: dict[str, Path], config: dict, timings: dict[str, float],
                   fingerprint: dict, extra: dict | None = None) -> dict:
    """Fingerprint every file in `folder` and every input; inputs are named files of earlier stages, recorded
    relative to the run folder (so a run folder can be moved) and re-checked by every later reader.
    `fingerprint` is what the stage's outputs depend on: `vqprior run` skips the stage while it is unchanged."""
    run_dir = Path(folder).parent
    manifest = {
        "stage": stage,
        "what": STAGE_NAMES[stage],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fingerprint": fingerprint,
        "inputs": {name: {"path": _relative(Path(p), run_dir), "sha256": sha256_file(Path(p))} for name, p in inputs.items()},
        "outputs": {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST},
        "config": config,
        "versions": versions(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        **(extra or {}),
    }
    save_json(folder / MANIFEST, manifest)
    return manifest


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path.resolve())


def read_stage(run_dir: Path, stage: int, needed_by: int | None = None) -> tuple[Path, dict]:
    """Return (folder, manifest) of a finished stage after checking that its files are unchanged and that the
    earlier stages' files it was made from are still the current ones."""
    folder = stage_dir(run_dir, stage)
    if not (folder / MANIFEST).is_file():
        who = f"stage {needed_by} needs" if needed_by else "missing"
        raise UserError(
            f"{who} stage {stage} ({STAGE_NAMES[stage]}) output in {folder}, which does not exist; run `vqprior run-stage {stage}` first"
        )
    manifest = load_json(folder / MANIFEST)
    for name, digest in manifest.get("outputs", {}).items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} is missing though stage {stage}'s manifest lists it; re-run stage {stage}")
        if sha256_file(path) != digest:
            raise UserError(f"{path} changed after stage {stage} wrote it (sha256 differs from its manifest); re-run stage {stage}")
    for name, record in manifest.get("inputs", {}).items():
        source = Path(run_dir) / record["path"]  # an absolute path stays absolute
        if not source.is_file() or sha256_file(source) != record["sha256"]:
            made_by = re.match(r"stage(\d)/", record["path"])
            first = int(made_by.group(1)) + 1 if made_by else stage
            redo = f"stage {stage}" if first >= stage else f"stages {', '.join(map(str, range(first, stage)))} and {stage}"
            raise UserError(f"stage {stage} in {folder} was made from a {source} that has since been replaced or removed "
                            f"(an earlier stage was re-run); re-run {redo}")
    return folder, manifest


def is_current(run_dir: Path, stage: int, fingerprint: dict | None) -> bool:
    """True when stage's outputs are intact, made from the current earlier stages, with this fingerprint."""
    if fingerprint is None or not (stage_dir(run_dir, stage) / MANIFEST).is_file():
        return False
    try:
        _, manifest = read_stage(run_dir, stage)
    except UserError:
        return False
    return manifest.get("fingerprint") == json.loads(json.dumps(fingerprint))


def output_sha(run_dir: Path, stage: int, name: str) -> str | None:
    """The sha256 a finished stage recorded for one of its outputs (not re-hashed), or None."""
    path = stage_dir(run_dir, stage) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("outputs", {}).get(name)
    except (OSError, json.JSONDecodeError):
        return None
