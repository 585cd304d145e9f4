"""Errors a user can fix. The CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class UserError(Exception):
    """A mistake in the input (config, data, missing stage output). The message says what is wrong and what to do."""


class DiskFull(UserError):
    """No space left (or quota exceeded) while writing; nothing half-written was left behind."""


def disk_full(path, needed_bytes: int | None = None) -> DiskFull:
    """The one-line error for a full disk: what was being written, how much room to make, where else to write."""
    path = Path(path)
    free = _free_bytes(path)
    room = (
        f"free {_mb(needed_bytes - free)} MB"
        if needed_bytes is not None and free is not None and needed_bytes > free
        else "free some space"
    )
    return DiskFull(
        f"no space left on device while writing {path}"
        + (f" ({_mb(free)} MB free)" if free is not None else "")
        + f"; {room} or choose another run.out_dir, then run the same command again"
    )


def ensure_free(path, needed_bytes: int) -> None:
    """Refuse up front (before anything is written) when `path`'s filesystem has less than needed + a margin free
    (1 MB + 10%, for the manifest and the small files written beside)."""
    needed = needed_bytes + (1 << 20) + needed_bytes // 10
    free = _free_bytes(Path(path))
    if free is not None and free < needed:
        raise disk_full(path, needed)


def os_error_message(e: OSError) -> str | None:
    """One line for the OS errors a user fixes outside the program (full disk, permissions, read-only filesystem);
    None for anything else, which is a bug and keeps its traceback."""
    where = f" {e.filename}" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            str(disk_full(e.filename or "."))
            if e.filename
            else "no space left on device; free some space or choose another run.out_dir"
        )
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where}; make it writable or choose another run.out_dir (or --out-dir)"
    if e.errno == errno.EROFS:
        return f"read-only file system:{where}; choose a writable run.out_dir (or --out-dir)"
    return None


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def _mb(n: int) -> int:
    return max(1, -(-n // (1 << 20)))
