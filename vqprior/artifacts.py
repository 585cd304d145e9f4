"""Trustworthy file I/O for run folders: confinement, atomic writes, checked reads, cached digests.

A run folder may be shared (handed over, unpacked from an archive, writable by others), so nothing read or
written under it leaves it: `check_run_folder` refuses a symbolic link or a special file (FIFO, device,
socket) anywhere inside before a command reads or writes there, manifests name only paths inside the run
folder (`inside`), files are opened without following links (O_NOFOLLOW) and checked to be regular files, and
every write goes to a fresh temporary file (O_CREAT | O_EXCL, unique name) that is renamed over the target,
which replaces a link instead of writing through it. The layout itself is `run_folder.RunFolder`'s.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import platform
import secrets
import shutil
import stat
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

MAX_JSON_BYTES = 64 << 20  # a manifest, config or metrics file; anything larger is not one of ours


def check_run_folder(run_dir: Path) -> None:
    """Refuse, before anything is read or written, a run folder with a symbolic link or a special file anywhere
    inside it: a planted link would make a command write, delete or expose a file outside the folder. The run
    folder itself may be a link (a run kept on another disk); what is inside it may not."""
    root = Path(run_dir)
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=_walk_error):
        for name in dirnames + filenames:
            check_entry(Path(dirpath) / name)


def _walk_error(e: OSError) -> None:
    raise UserError(f"cannot read the run folder {e.filename}: {e.strerror}; make it readable") from None


def check_entry(path: Path) -> os.stat_result:
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
            check_entry(path)  # raises the one line for a link
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


@contextlib.contextmanager
def writing_folder(final: Path, hint: str = "choose a writable run.out_dir") -> Iterator[Path]:
    """Yield a fresh temporary folder beside `final`; on success it replaces `final`, on any error it is removed.
    `hint`: what the user can do when the folder cannot be written (the run folder's setting, or the flag that named
    the folder)."""
    run_dir = Path(final).parent
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_folder_chain(final)
        tmp = run_dir / f".{final.name}.tmp-{os.getpid()}"
        remove(tmp)
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"cannot write to {run_dir}: {e.strerror}; {hint}") from None
    try:
        yield tmp
        old = run_dir / f".{final.name}.old-{os.getpid()}"
        if os.path.lexists(final):
            final.rename(old)  # a rename moves a link itself, never what it points to
        tmp.rename(final)
        remove(old)
    except BaseException as e:
        remove(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(e.filename or final) from None
        raise


def _check_folder_chain(final: Path) -> None:
    """The folder that `final` will replace, and its parent, must not be links (the parent is a run folder or one of
    its folders, whose own checks ran already; this covers a link planted since)."""
    for p in (final, final.parent / f".{final.name}.tmp-{os.getpid()}"):
        if os.path.islink(p):
            check_entry(p)


def remove(path: Path) -> None:
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
            check_entry(path)
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
    return parse_json(read_regular(path, MAX_JSON_BYTES), path)


def parse_json(data: bytes, path: Path) -> Any:
    """JSON from the bytes of `path` (named in the one-line error)."""
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
    return parse_json_object(read_regular(path, MAX_JSON_BYTES), path)


def parse_json_object(data: bytes, path: Path) -> dict:
    obj = parse_json(data, path)
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
