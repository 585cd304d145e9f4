"""Where a config comes from: the defaults, then a preset, a TOML file (`--config`), `--set key=value` overrides and
a command's own flags, each layer on top of the last, validated once at the end."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import ValidationError

from .config import Config, prior_kind, prior_network
from .config_checks import format_validation_error
from .errors import UserError
from .registry import names as registry_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "presets"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a folder; pass a .toml file") from None
    except PermissionError:
        raise UserError(f"config file {path} is not readable (permission denied)") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text; save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None


def paths_from(layer: dict, folder: Path) -> dict:
    """A config file's relative paths (data.root, a component's file target or weights) read from the file's own
    folder, as a reader of the file expects, not from wherever vqprior runs; --set paths stay relative to the
    current folder. Absolute and ~ paths are left as they are."""

    def place(path: str) -> str:
        p = Path(path)
        return path if p.is_absolute() or path.startswith("~") else str(folder / p)

    def walk(node):
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items()}
        target = out.get("target")
        if isinstance(target, str) and ":" in target and target.rpartition(":")[0].endswith(".py"):
            where, _, name = target.rpartition(":")
            out["target"] = f"{place(where)}:{name}"
        if isinstance(out.get("weights"), str):
            out["weights"] = place(out["weights"])
        return out

    layer = walk(layer)
    data = layer.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str):
        layer["data"] = {**data, "root": place(data["root"])}
    return layer


def _merge(base: dict, over: dict) -> dict:
    """Deep merge; a component whose target changes is replaced whole (old params belong to the old class)."""
    if "target" in over and over["target"] != base.get("target"):
        return dict(over)
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_override(item: str) -> dict:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {item!r}: expected section.key=value, e.g. --set prior.epochs=2")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict | None = None,
) -> Config:
    """Defaults <- preset <- file <- overrides ("key=TOML value" strings, as --set takes them) <- values (a nested
    dict, as a command's own flags give them), validated."""
    data: dict = Config().model_dump(mode="json")
    data["run"]["name"] = None  # named after the data source unless a preset, file or --set names it
    layers = []
    if preset:
        if preset not in presets():
            raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(presets())}")
        layers.append(_read_toml(PRESET_DIR / f"{preset}.toml"))
    if file:
        layers.append(paths_from(_read_toml(Path(file)), Path(file).parent))
    layers += [_parse_override(item) for item in overrides or []]
    layers += [values] if values else []
    # prior.kind picks the network before any layer's network params apply, wherever it is set
    kinds = [
        layer["prior"]["kind"] for layer in layers if isinstance(layer.get("prior"), dict) and "kind" in layer["prior"]
    ]
    if kinds and kinds[-1] in registry_names("prior"):
        data["prior"]["network"] = prior_network(kinds[-1]).model_dump(mode="json")
    for layer in layers:
        prior = layer.get("prior")
        network = prior.get("network") if isinstance(prior, dict) else None
        if (
            isinstance(network, dict) and "target" in network and "kind" not in prior
        ):  # a new network class sets its kind
            layer = {**layer, "prior": {**prior, "kind": prior_kind(str(network["target"]))}}
        data = _merge(data, layer)
    if not any(isinstance(layer.get("vqvae"), dict) and "codebook_size" in layer["vqvae"] for layer in layers):
        data["vqvae"].pop("codebook_size", None)  # unset (fsq: the product of its levels), not "set to the default"
    return validate_config(data)


def validate_config(data: dict) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e)) from None
