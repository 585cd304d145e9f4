"""Run folder layout and trustworthy artifact I/O.

artifacts/<run>/stage1 .. stage4. A stage writes into a hidden temporary folder and renames it into place
when everything is written, so a crash never leaves a half-written stage under its final name. Each stage
folder has a manifest.json with sha256 fingerprints of what it read and wrote; later stages check them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
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
from .data import sha256_file
from .errors import UserError

STAGE_NAMES = {1: "VQ-VAE", 2: "code maps", 3: "prior", 4: "samples"}
MANIFEST = "manifest.json"


def stage_dir(run_dir: Path, stage: int) -> Path:
    return Path(run_dir) / f"stage{stage}"


@contextlib.contextmanager
def writing_stage(run_dir: Path, stage: int) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces stage<N>, on any error it is removed."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".stage{stage}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"cannot write to {run_dir}: {e.strerror}; choose a writable run.out_dir") from None
    try:
        yield tmp
        final = stage_dir(run_dir, stage)
        old = run_dir / f".stage{stage}.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == 28:
            raise UserError(f"disk full while writing stage {stage} to {run_dir}; free space and run the stage again") from None
        raise


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Only one process writes a run folder at a time; a lock left by a dead process is taken over."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {run_dir}: {e.strerror}; choose a writable run.out_dir") from None
    lock = run_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise UserError(f"run folder {run_dir} is in use by process {pid}; wait for it to finish or use another --name") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
        except OSError as e:
            raise UserError(f"cannot write to {run_dir}: {e.strerror}; choose a writable run.out_dir") from None
    else:
        raise UserError(f"could not take the lock {lock}; remove it if no other vqprior is running")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves no trace


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


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


def write_manifest(folder: Path, stage: int, inputs: dict[str, Path], config: dict, timings: dict[str, float], extra: dict | None = None) -> dict:
    """Fingerprint every file in `folder` and every input; inputs are named files from earlier stages."""
    manifest = {
        "stage": stage,
        "what": STAGE_NAMES[stage],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {name: {"path": str(p), "sha256": sha256_file(Path(p))} for name, p in inputs.items()},
        "outputs": {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST},
        "config": config,
        "versions": versions(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        **(extra or {}),
    }
    save_json(folder / MANIFEST, manifest)
    return manifest


def read_stage(run_dir: Path, stage: int, needed_by: int | None = None) -> tuple[Path, dict]:
    """Return (folder, manifest) of a finished stage after checking that its files are unchanged."""
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
    return folder, manifest
