"""Helpers that break the machine under a run: small or read-only filesystems (tmpfs, needs root) and dead writers."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int, readonly: bool = False) -> Iterator[Path | None]:
    """A tmpfs of `size_kb` mounted at `path` (None where mounting is not allowed: not root, or no CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount_readonly(path: Path) -> bool:
    return subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True).returncode == 0


def fill(path: Path, leave_kb: int) -> Path:
    """Fill the filesystem of `path` until about `leave_kb` KiB are free; returns the filler file."""
    import os

    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = path / "filler.bin"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_kb * 1024))
    return filler
