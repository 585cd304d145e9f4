"""Values given to a command, the API or the page, checked by the config's own rules; and the one line that says
what is wrong with a config (with "did you mean" for a mistyped key)."""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from . import guidance as guidance_values
from .config import MAX_SEED, Config, RunSection, SampleSection
from .errors import UserError


def check_sampling(
    temperature: float | None, guidance: guidance_values.Guidance | None = None, seed: int | None = None
) -> None:
    """sample.temperature's and sample.guidance's ranges (and a seed's) for values given to eval, complete, the API
    or the page; None is "not given"."""
    if guidance is not None:
        try:
            guidance_values.check(guidance)
        except ValueError as e:
            raise UserError(str(e)) from None
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))):
        raise UserError(f"temperature must be a number, got {temperature!r}")
    values = {"temperature": temperature} if temperature is not None else {}  # guidance: checked above
    try:
        SampleSection.model_validate(values)
    except ValidationError as e:
        raise UserError(format_validation_error(e).replace("config: sample.", "", 1)) from None
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED
    ):
        raise UserError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")


class Sampling(NamedTuple):
    """One call's validated sampling options (what `Run.sampling` returns)."""

    temperature: float
    guidance: float | tuple[float, float]  # a scale, or a ramp (first, last) over the raster positions
    seed: int


def validate_run_name(name: str) -> str:
    """run.name's rules for a name given on the command line: one line if it breaks them."""
    try:
        RunSection(name=name)
    except ValidationError:
        raise UserError(
            f"--name {name!r}: a run name is a plain folder name (letters, digits, _ . -, not starting with . or -)"
        ) from None
    return name


def _did_you_mean(loc: tuple) -> str:
    """' (did you mean prior.epochs?)' for a mistyped key of a config section."""
    import difflib

    model: Any = Config
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        model = getattr(field, "annotation", None) if field is not None else None
        if not isinstance(model, type) or not issubclass(model, BaseModel):
            return ""
    keys = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    return f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?)" if close else ""


def format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"config: unknown key '{where}'{_did_you_mean(first['loc'])}; check the spelling (see docs/configuration.md)"
    got = first.get("input")
    got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
    message = first["msg"].removeprefix("Value error, ")  # our own validators' words, without pydantic's label
    return f"config: {where}: {message}{got_txt}; fix it in your config file or --set"
