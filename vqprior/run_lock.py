"""The run lock: one writer per run folder (an OS lock, released when its process dies), and the cleanup of what
writers that died left behind (temporary files and folders named after their process)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from .artifacts import check_entry, check_run_folder, remove
from .errors import UserError

LEFTOVER = re.compile(r"^\..+\.(?:tmp|old)-(\d+)$|^\..+\.(\d+)\.tmp$")  # .stage2.tmp-<pid>, .stage1.pt.<pid>.tmp, ...


@contextlib.contextmanager
def run_lock(run_dir: Path, inner: tuple[Path, ...] = ()) -> Iterator[None]:
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
        remove_leftovers(run_dir, inner)
        yield
    finally:
        path.unlink(missing_ok=True)  # unlinked while still held: a waiting process re-checks the inode
        os.close(fd)
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves no trace


def remove_leftovers(run_dir: Path, inner: tuple[Path, ...] = ()) -> list[Path]:
    """Remove the temporary files and folders of writers that died (killed, power cut) before cleaning up; the
    caller holds the run lock, so no live writer of this folder can own them. `inner`: the run folder's folders that
    writers also write into (RunFolder names them). Returns what was removed."""
    removed = []
    for folder in [run_dir, *inner]:
        if os.path.islink(folder) or not folder.is_dir():
            continue  # never look inside a link (check_run_folder refuses one anyway)
        for p in folder.iterdir():
            m = LEFTOVER.match(p.name)
            if m and not _alive(int(m.group(1) or m.group(2))):
                remove(p)
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
                check_entry(path)
            if os.fstat(fd).st_nlink > 1:  # a hard link to a file elsewhere: writing our pid would truncate it
                os.close(fd)
                raise UserError(
                    f"{path} is a hard link to another file; remove it (nothing uses it but vqprior) and run again"
                )
        except OSError as e:
            if e.errno == errno.ELOOP:
                check_entry(path)  # a planted link: one line, its target untouched
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
