"""Whether the user opted in to running code named by a config or a run folder (`--trust-code`); torch-free, so the
CLI sets it without importing torch."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_trust_code = contextvars.ContextVar("vqprior_trust_code", default=False)


@contextlib.contextmanager
def trusting_code(trust: bool = True) -> Iterator[None]:
    """While active, components outside the registry may be imported (the user's explicit opt-in)."""
    token = _trust_code.set(bool(trust))
    try:
        yield
    finally:
        _trust_code.reset(token)


def code_is_trusted() -> bool:
    return _trust_code.get()
