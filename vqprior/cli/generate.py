"""`vqprior generate`: new images from a finished run into a file of your choosing (stage 4 stays the stage)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import MAX_SEED
from ..config_checks import check_sampling
from ..errors import UserError
from ..trust import trusting_code
from .common import (
    GUIDANCE_HELP,
    Device,
    Labels,
    Name,
    OutDir,
    Trust,
    _one_line_errors,
    _run_dir_of,
    app,
    console,
    guidance_flag,
    label_value,
    mix_flag,
    morph_flag,
)

MAX_IMAGES = 100_000  # sample.limit's default: a typo in --per-class should not start hours of work


def _tag(labels: list[str], mix: Optional[str], morph: Optional[str], seed: int) -> str:
    """A file name that says what was asked for: seven-seed0, mix-seven-one-seed0, morph-four-nine-seed0."""
    if morph:
        what = "morph-" + "-".join(morph.split(":"))
    elif mix:
        what = "mix-" + "-".join(item.rpartition(":")[0] for item in mix.split(","))
    else:
        what = "-".join(labels[:4]) + ("-etc" if len(labels) > 4 else "") if labels else "all"
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', what).strip('._')[:80] or 'images'}-seed{seed}"


def _default_out(folder: Path, tag: str) -> Path:
    """<run>/generated/<tag>.png, numbered -2, -3, ... rather than replacing an earlier file."""
    out = folder / f"{tag}.png"
    k = 2
    while out.exists():
        out, k = folder / f"{tag}-{k}.png", k + 1
    return out


@app.command("generate")
def generate(
    name: Name = None,
    out_dir: OutDir = "artifacts",
    label: Labels = [],
    mix: Annotated[
        Optional[str], typer.Option(help="Draw between classes, e.g. --mix seven:0.5,one:0.5 (names or indices).")
    ] = None,
    morph: Annotated[
        Optional[str], typer.Option(help="Strips that move from one class to another, e.g. --morph four:nine.")
    ] = None,
    steps: Annotated[int, typer.Option(min=2, max=100, help="Steps of a --morph strip.")] = 9,
    per_class: Annotated[
        int,
        typer.Option(
            "--per-class", "-n", min=1, help="Images per class (in all if unconditional; strips for --morph)."
        ),
    ] = 10,
    guidance: Annotated[
        Optional[str], typer.Option(help=f"The {GUIDANCE_HELP} (default: the run's sample.guidance).")
    ] = None,
    temperature: Annotated[
        Optional[float], typer.Option(help="Sampling temperature (> 0; default: the run's sample.temperature).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Sampling seed: same seed, same images.")] = 0,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="File to write: .png (a sheet, one row per class) or .npz (images, codes, labels). "
            "Default: <run>/generated/<what>-seed<N>.png, numbered instead of replacing.",
        ),
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite --out if it exists.")] = False,
    trust_code: Trust = False,
    device: Device = "auto",
) -> None:
    """Generate new images from a finished run: of chosen classes, between two, or strips from one to another.

    Classes are given by name (the run's folder names, e.g. seven) or index; stage 1 prints both. Every call writes
    a new file; nothing in the run's stage folders changes.

    Example: vqprior generate --label seven --per-class 16 --out 7s.png"""
    with _one_line_errors(), trusting_code(trust_code):
        from ..api import load
        from ..generated_files import check_output_path
        from ..run_folder import RunFolder

        given = [what for what, v in (("--label", label), ("--mix", mix), ("--morph", morph)) if v]
        if len(given) > 1:
            raise UserError(f"{' and '.join(given)} do not go together; give one")
        scale = guidance_flag(guidance)
        check_sampling(temperature, scale, seed)
        weights = mix_flag(mix) if mix else None
        ends = morph_flag(morph) if morph else None
        run_dir = _run_dir_of(name, out_dir)
        names = RunFolder(run_dir).saved(3).get("class_names")  # classes checked before the models load
        from ..class_names import resolve, resolve_all

        if label:
            resolve_all([label_value(c) for c in label], names, "--label")
        for c in list(weights or {}) + list(ends or []):
            resolve(c, names, "--mix class" if weights else "--morph class")
        rows = max(1, len(label) if label else (1 if mix or not names else len(names)))
        total = per_class * rows * (steps if morph else 1)
        if total > MAX_IMAGES:
            raise UserError(f"that is {total:,} images, more than {MAX_IMAGES:,} at once; lower --per-class")
        target = (
            check_output_path(out, replace)
            if out
            else _default_out(RunFolder(run_dir).generated, _tag(label, mix, morph, seed))
        )
        run = load(run_dir, device, trust_code=trust_code)
        options = {"temperature": temperature, "guidance": scale, "seed": seed}
        if ends:
            made = run.morph(ends[0], ends[1], steps, per_class, **options)
        elif weights:
            from ..soft_labels import class_mix

            row = class_mix(run.num_classes, [(resolve(c, names), w) for c, w in weights.items()])
            made = run.generate(row.repeat(per_class, 1), **options)
            made.captions, made.per_row = [" + ".join(f"{w:g} {c}" for c, w in weights.items())], per_class
        elif run.num_classes:
            classes = [label_value(c) for c in label] if label else list(range(run.num_classes))
            made = run.generate([c for c in classes for _ in range(per_class)], **options)
        else:
            made = run.generate(None, per_class, **options)
        path = made.save(target, replace)
        if ends:
            what = f"{per_class} strip(s) of {steps} from {made.captions[0]}"
        elif made.captions:
            what = f"{len(made.images)} images ({made.captions[0]})"
        elif run.num_classes:
            shown = ", ".join(run.class_names[c] for c in dict.fromkeys(made.labels.tolist()))
            what = f"{len(made.images)} images, {per_class} each of {shown}"
        else:
            what = f"{len(made.images)} images"
        console.print(f"[green]generated[/] {what} -> {path}")
