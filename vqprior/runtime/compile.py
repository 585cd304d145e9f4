"""torch.compile with a fallback: a compiler failure is one notice, and the same function runs uncompiled."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..reporter import Reporter


def maybe_compile(fn: Callable, enabled: bool, reporter: "Reporter", what: str) -> Callable:
    """`fn` compiled with torch.compile when enabled, else `fn`. torch.compile compiles on the first call, so a
    failure (no C compiler, an unsupported op) shows there: then one notice, and `fn` runs eagerly from then on."""
    if not enabled:
        return fn
    compiled = torch.compile(fn)
    state = {"fn": compiled}

    def call(*args, **kwargs):
        if state["fn"] is compiled:
            try:
                return compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure falls back to the same code, uncompiled
                reporter.log(
                    f"[yellow]notice:[/] torch.compile of the {what} failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                    f"running it uncompiled (run.compile=false skips the attempt)"
                )
                state["fn"] = fn
        return state["fn"](*args, **kwargs)

    return call
