"""Generated images written to a file the user names: a .png sheet (one row per class, labelled) or an .npz of the
arrays. A file appears whole or not at all, and an existing one is never replaced unless asked."""

from __future__ import annotations

import errno
import io
import os
import secrets
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

PACKAGE = Path(__file__).resolve().parent
SHEET_COLUMNS = 32  # a sheet shows at most this many images per row; the .npz has all
SUFFIXES = (".png", ".npz")


def check_output_path(path: Path, replace: bool) -> Path:
    """Refuse, before any work, an output path that cannot be written: a wrong suffix, an existing file without
    `replace`, a folder, or a place inside the installed package."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--out {path}: name a .png (a sheet of the images) or .npz (the arrays) file")
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; name a file in it, e.g. {path / 'samples.png'}")
    if path.exists() and not replace:
        raise UserError(f"{path} exists; pass --replace to overwrite it, or name another --out")
    return outside_package(path)


def check_output_folder(path: Path, replace: bool) -> Path:
    """The same checks for a folder of outputs (complete's --out): not a file, not an existing folder without
    `replace` (with it, the folder is replaced whole when the new one is complete), not inside the package."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file; name a folder for the completions")
    if path.exists() and not replace:
        raise UserError(f"{path} exists; pass --replace to replace it, or name another --out folder")
    return outside_package(path)


def outside_package(path: Path) -> Path:
    """`path`, refused when it is the installed vqprior package or inside it (its last part is not followed: a link
    there is replaced, never written through)."""
    resolved = path.parent.resolve() / path.name
    if resolved == PACKAGE or PACKAGE in resolved.parents:
        raise UserError(f"{path} is inside the installed vqprior package, which is never written; choose another place")
    return path


def rows_of(labels: torch.Tensor | None, names: list[str] | None, count: int) -> tuple[int, list[str] | None]:
    """(images per row, one caption per row) for a sheet: rows of equal runs of one class are captioned with its
    name; anything else (soft labels, unequal runs) is laid out 10 to a row without captions."""
    if labels is None or labels.is_floating_point() or not len(labels):
        return min(count, 10) or 1, None
    values = labels.tolist()
    runs, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            runs.append((values[start], i - start))
            start = i
    if len({length for _, length in runs}) != 1:
        return min(count, 10), None
    per_row = runs[0][1]
    captions = [str(names[c]) if names and 0 <= c < len(names) else str(c) for c, _ in runs]
    return per_row, captions


def sheet_png(images: torch.Tensor, per_row: int, captions: list[str] | None) -> bytes:
    from .report.sheets import labelled_sheet

    if captions and per_row > SHEET_COLUMNS:  # each row shows its first SHEET_COLUMNS images
        rows = len(images) // per_row
        images = torch.cat([images[r * per_row : r * per_row + SHEET_COLUMNS] for r in range(rows)])
        per_row = SHEET_COLUMNS
    return labelled_sheet(images, min(per_row, SHEET_COLUMNS), captions, scale=2)


def save_generated(generated, path: Path, replace: bool) -> Path:
    path = check_output_path(path, replace)
    if path.suffix.lower() == ".png":
        per_row, captions = generated.per_row, generated.captions
        if per_row is None:
            per_row, captions = rows_of(generated.labels, generated.class_names, len(generated.images))
        data = sheet_png(generated.images, per_row, captions)
    else:
        buffer = io.BytesIO()
        arrays = {"images": generated.images.numpy(), "codes": generated.codes.numpy()}
        if generated.labels is not None:
            key = "label_weights" if generated.labels.is_floating_point() else "labels"
            arrays[key] = generated.labels.cpu().numpy()
        if generated.class_names:
            arrays["class_names"] = np.array([str(n) for n in generated.class_names])
        np.savez_compressed(buffer, **arrays)
        data = buffer.getvalue()
    write_new_file(path, data, replace)
    return path


def write_new_file(path: Path, data: bytes, replace: bool) -> None:
    """Write `data` to a fresh temporary file beside `path`, then move it into place: with `replace` over whatever
    is there, without it only if nothing is (a hard link fails on an existing name, so a file that appeared in the
    meantime is not overwritten either)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "xb") as f:
            f.write(data)
        try:
            if replace:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    except FileExistsError:
        raise UserError(f"{path} exists; pass --replace to overwrite it, or name another --out") from None
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EXDEV, errno.ENOTSUP) and not replace:  # a file system without hard links
            raise UserError(f"cannot write {path} without replacing ({e.strerror}); pass --replace") from None
        raise
