"""Classes by name: what `--label seven`, `--mix seven:0.5,one:0.5`, `--morph four:nine`, `labels=["seven"]` and the
page mean, against the names a run saved from its data (folder names, a torchvision dataset's `classes`).

A class is given by its name or by its index (the position of the name in the saved list, which for a folder is
the sorted order: eight=0, five=1, ... for English digit names). A name wins over an index, so for a dataset whose
classes are called "1", "10", "2", `--label 10` is the class named "10".
"""

from __future__ import annotations

import difflib
import numbers

from .errors import UserError


def listing(names: list[str] | None, most: int = 12) -> str:
    """'0 eight, 1 five, ...' (index and name), shortened after `most` classes."""
    if not names:
        return "none (the data had no labels)"
    shown = [f"{i} {n}" for i, n in enumerate(names[:most])]
    return ", ".join(shown) + (f", ... ({len(names)} classes)" if len(names) > most else "")


def resolve(value, names: list[str] | None, what: str = "class") -> int:
    """The index of a class given by name or index, or a one-line UserError that lists the classes."""
    if not names:
        raise UserError(f"{what} {value!r}: this run's prior is unconditional (its data had no classes)")
    labels = [str(n) for n in names]
    if isinstance(value, str):
        text = value.strip()
        if text in labels:
            return labels.index(text)
        folded = [n.casefold() for n in labels]
        if text.casefold() in folded:
            return folded.index(text.casefold())
        if text.lstrip("-").isdigit():
            value = int(text)
        else:
            close = difflib.get_close_matches(text, labels, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{what} {value!r} is not a class of this run{hint}; its classes: {listing(names)}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{what} {value!r}: give a class name or index; this run's classes: {listing(names)}")
    if not 0 <= int(value) < len(labels):
        raise UserError(f"{what} {value} is out of range; this run's classes: {listing(names)}")
    return int(value)


def resolve_all(values, names: list[str] | None, what: str = "class") -> list[int]:
    return [resolve(v, names, what) for v in values]


def name_of(index: int, names: list[str] | None) -> str:
    return str(names[index]) if names and 0 <= index < len(names) else str(index)
