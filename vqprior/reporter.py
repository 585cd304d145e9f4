"""The stages' link to the console, free of torch so that the CLI can start without importing it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Reporter:
    """A stage's link to the console. The library default is silent; the CLI installs a rich one (rank 0 only)."""

    def log(self, message: str) -> None:
        pass

    def track(self, items: Iterable[T], total: int, description: str) -> Iterator[T]:
        yield from items
