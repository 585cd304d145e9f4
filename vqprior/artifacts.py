"""Run folder layout and trustworthy artifact I/O.

artifacts/<run>/stage1 .. stage4. A stage writes into a hidden temporary folder and renames it into place
when everything is written, so a crash never leaves a half-written stage under its final name. Each stage
folder has a manifest.json with sha256 fingerprints of what it read and wrote; later stages check them.

A run folder may be shared (handed over, unpacked from an archive, writable by others), so nothing read or
written under it leaves it: `check_run_folder` refuses a symbolic link or a special file (FIFO, device,
socket) anywhere inside before a command reads or writes there, manifests name only plain files of their own
stage and paths inside the run folder, files are opened without following links (O_NOFOLLOW) and checked to
be regular files, and every write goes to a fresh temporary file (O_CREAT | O_EXCL, unique name) that is
renamed over the target, which replaces a link instead of writing through it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .errors import UserError, disk_full
from .version import __version__

STAGE_NAMES = {1: "VQ-VAE", 2: "code maps", 3: "prior", 4: "samples"}
MANIFEST = "manifest.json"
MAX_JSON_BYTES = 64 << 20  # a manifest, config or metrics file; anything larger is not one of ours
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a stage's output: a file name, no folder, no '..'


def check_run_folder(run_dir: Path) -> None:
    """Refuse, before anything is read or written, a run folder with a symbolic link or a special file anywhere
    inside it: a planted link would make a command write, delete or expose a file outside the folder. The run
    folder itself may be a link (a run kept on another disk); what is inside it may not."""
    root = Path(run_dir)
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=_walk_error):
        for name in dirnames + filenames:
            _check_entry(Path(dirpath) / name)


def _walk_error(e: OSError) -> None:
    raise UserError(f"cannot read the run folder {e.filename}: {e.strerror}; make it readable") from None


def _check_entry(path: Path) -> os.stat_result:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UserError(f"missing file {path}; re-run the stage that writes it") from None
    if stat.S_ISLNK(st.st_mode):
        raise UserError(
            f"{path} is a symbolic link; a run folder holds only its own files, so nothing was read or written: "
            f"remove the link (copy the file in if it belongs there)"
        )
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UserError(
            f"{path} is not a regular file or folder (a FIFO, socket or device); nothing was read or written: remove it"
        )
    return st


def inside(run_dir: Path, relative: str) -> Path:
    """`run_dir / relative` for a path recorded in a manifest, refused unless it is relative and stays inside."""
    rel = Path(relative)
    if rel.is_absolute() or not relative or any(part in ("..", "") for part in rel.parts):
        raise UserError(
            f"a manifest in {run_dir} names {relative!r}, a path outside the run folder; re-run the stage that wrote it"
        )
    return Path(run_dir) / rel


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file, opened without following a link (a FIFO or device is refused, never waited on);
    with `limit`, a larger file is refused."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(f"missing file {path}; re-run the stage that writes it") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            _check_entry(path)  # raises the one line for a link
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path} is not a regular file (a FIFO, socket or device); remove it")
        if limit is not None and st.st_size > limit:
            raise UserError(
                f"{path} is {st.st_size:,} bytes, more than such a file can be ({limit:,}); re-run the stage that wrote it"
            )
        data = f.read(st.st_size + 1)
        if len(data) > st.st_size:  # /proc-like files say 0 bytes and never end: not a file of ours
            raise UserError(f"{path} grows while it is read (not an ordinary file); remove it")
        return data


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
        _check_folder_chain(final)
        tmp = run_dir / f".{final.name}.tmp-{os.getpid()}"
        _remove(tmp)
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"cannot write to {run_dir}: {e.strerror}; choose a writable run.out_dir") from None
    try:
        yield tmp
        old = run_dir / f".{final.name}.old-{os.getpid()}"
        if os.path.lexists(final):
            final.rename(old)  # a rename moves a link itself, never what it points to
        tmp.rename(final)
        _remove(old)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(e.filename or final) from None
        raise


def _check_folder_chain(final: Path) -> None:
    """The folder that `final` will replace, and its parent, must not be links (the parent is a run folder or one of
    its folders, whose own checks ran already; this covers a link planted since)."""
    for p in (final, final.parent / f".{final.name}.tmp-{os.getpid()}"):
        if os.path.islink(p):
            _check_entry(p)


def _remove(path: Path) -> None:
    """Remove a file, folder or link at `path` (a link itself, never what it points to)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)  # rmtree does not follow links inside (fd-based where the OS has it)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Only one process writes a run folder at a time: an OS lock (flock) on `<run>/.lock`, released by the
    kernel when its process dies, so a crashed run never leaves a lock that blocks the next one."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create the run folder {run_dir}: {e.strerror}; choose a writable run.out_dir"
        ) from None
    path = run_dir / ".lock"
    fd = _take_lock(path, run_dir)
    try:
        check_run_folder(run_dir)
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
    for folder in (run_dir, run_dir / ".checkpoints", run_dir / "eval"):
        if os.path.islink(folder) or not folder.is_dir():
            continue  # never look inside a link (check_run_folder refuses one anyway)
        for p in folder.iterdir():
            m = LEFTOVER.match(p.name)
            if m and not _alive(int(m.group(1) or m.group(2))):
                _remove(p)
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
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                _check_entry(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                _check_entry(path)  # a planted link: one line, its target untouched
            raise UserError(f"cannot write to {run_dir}: {e.strerror}; choose a writable run.out_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise UserError(
                f"run folder {run_dir} is in use by {who}; wait for it to finish or use another --name"
            ) from None
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


# digests of files this process has hashed, by (device, inode, size, mtime, ctime) of the opened file: a stage's
# outputs are verified once per process however often they are read (stage 4 reads stage 1-3 outputs many times);
# any write to a file changes its ctime, so a changed file is hashed again
_DIGESTS: dict[tuple[int, int, int, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """sha256 of a regular file (a link, FIFO or never-ending file is refused in one line, not followed or waited on)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOENT):
            _check_entry(path)
        raise
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path} is not a regular file (a FIFO, socket or device); remove it")
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key in _DIGESTS:
            return _DIGESTS[key]
        left = st.st_size
        while left > 0:
            chunk = f.read(min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        if f.read(1):
            raise UserError(f"{path} grows while it is read (not an ordinary file); remove it")
    digest = h.hexdigest()
    after = os.stat(path, follow_symlinks=False)
    if (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) == key[1:]:  # unchanged while read
        _DIGESTS[key] = digest
    return digest


def temporary_beside(path: Path) -> tuple[Path, int]:
    """A new file beside `path` that nobody else can have opened or linked (O_EXCL, a random name, no link followed);
    its name `.<name>.<random>.<pid>.tmp` lets the leftover cleanup remove it once this process is gone."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.{os.getpid()}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            continue


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_atomic(Path(path), buffer.getvalue())


def save_json(path: Path, obj: Any) -> None:
    """Written whole or not at all (a temporary file renamed into place)."""
    write_bytes_atomic(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`data` at `path`, or a one-line DiskFull and no partial file when the disk fills up. The rename replaces
    whatever is at `path` (a planted link too) instead of writing through it."""
    path = Path(path)
    tmp = None
    try:
        tmp, fd = temporary_beside(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, len(data)) from None
        raise


def load_json(path: Path) -> Any:
    """The one JSON reader for a run folder's files: a regular file (no link followed), valid UTF-8 JSON of a sane
    size and depth, or a one-line UserError."""
    data = read_regular(path, MAX_JSON_BYTES)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; re-run the stage that writes it") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}); re-run the stage that writes it") from None
    except RecursionError:
        raise UserError(
            f"{path} is nested too deeply to be one of vqprior's files; re-run the stage that writes it"
        ) from None


def load_json_object(path: Path) -> dict:
    """load_json for files that hold one JSON object (manifests, configs, eval results)."""
    obj = load_json(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a JSON {type(obj).__name__}, not an object; re-run the stage that writes it")
    return obj


def save_weights(path: Path, module: torch.nn.Module) -> None:
    """safetensors, serialised in memory first so a full disk is one plain failed write (one line, nothing partial)."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    write_bytes_atomic(Path(path), save_safetensors(state, metadata={"vqprior": __version__}))


def load_weights(path: Path, module: torch.nn.Module) -> None:
    """Weights into `module`, refused in one line when unreadable, of another shape, or not finite (NaN/inf)."""
    data = read_regular(path)
    try:
        state = load_safetensors(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); re-run the stage that wrote it") from None
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{path}: weight {key!r} holds NaN or infinite values; re-run the stage that wrote it")
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(
            f"{path} does not fit the model in its config ({first[1].strip() if len(first) > 1 else first[0]}); re-run that stage"
        ) from None


def versions() -> dict[str, str]:
    return {
        "vqprior": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def write_manifest(
    folder: Path,
    stage: int,
    inputs: dict[str, Path],
    config: dict,
    timings: dict[str, float],
    fingerprint: dict,
    extra: dict | None = None,
) -> dict:
    """Fingerprint every file in `folder` and every input; inputs are named files of earlier stages, recorded
    relative to the run folder (so a run folder can be moved) and re-checked by every later reader.
    `fingerprint` is what the stage's outputs depend on: `vqprior run` skips the stage while it is unchanged."""
    run_dir = Path(folder).parent
    manifest = {
        "stage": stage,
        "what": STAGE_NAMES[stage],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fingerprint": fingerprint,
        "inputs": {
            name: {"path": _relative(Path(p), run_dir), "sha256": sha256_file(Path(p))} for name, p in inputs.items()
        },
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
    check_run_folder(run_dir)
    if not (folder / MANIFEST).is_file():
        who = f"stage {needed_by} needs" if needed_by else "missing"
        raise UserError(
            f"{who} stage {stage} ({STAGE_NAMES[stage]}) output in {folder}, which does not exist; run `vqprior run-stage {stage}` first"
        )
    manifest = load_json_object(folder / MANIFEST)
    outputs, inputs = manifest.get("outputs", {}), manifest.get("inputs", {})
    if (
        not isinstance(outputs, dict)
        or not isinstance(inputs, dict)
        or not all(
            isinstance(v, dict) and isinstance(v.get("path"), str) and isinstance(v.get("sha256"), str)
            for v in inputs.values()
        )
    ):
        raise UserError(
            f"{folder / MANIFEST} is not a stage manifest (outputs/inputs of the wrong shape); re-run stage {stage}"
        )
    for name, digest in outputs.items():
        if not PLAIN_NAME.match(name) or name == MANIFEST or not isinstance(digest, str):
            raise UserError(
                f"{folder / MANIFEST} lists {name!r} as an output, which is not a file of that stage folder; re-run stage {stage}"
            )
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} is missing though stage {stage}'s manifest lists it; re-run stage {stage}")
        if sha256_file(path) != digest:
            raise UserError(
                f"{path} changed after stage {stage} wrote it (sha256 differs from its manifest); re-run stage {stage}"
            )
    for record in inputs.values():
        source = inside(run_dir, record["path"])
        if not source.is_file() or sha256_file(source) != record["sha256"]:
            made_by = re.match(r"stage(\d)/", record["path"])
            first = int(made_by.group(1)) + 1 if made_by else stage
            redo = (
                f"stage {stage}" if first >= stage else f"stages {', '.join(map(str, range(first, stage)))} and {stage}"
            )
            raise UserError(
                f"stage {stage} in {folder} was made from a {source} that has since been replaced or removed "
                f"(an earlier stage was re-run); re-run {redo}"
            )
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
        digest = load_json_object(path).get("outputs", {}).get(name)
    except (OSError, UserError, AttributeError):
        return None
    return digest if isinstance(digest, str) else None
