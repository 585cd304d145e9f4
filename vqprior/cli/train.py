"""`vqprior run` and `vqprior run-stage`: the stages in order, resumable, never replacing finished work silently."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Optional

import typer

from ..config import Config
from ..config_files import load_config
from ..errors import UserError
from ..reporter import Reporter
from ..trust import trusting_code
from .common import (
    RESUMABLE,
    ConfigFile,
    ConsoleReporter,
    Guidance,
    Labels,
    Mix,
    Morph,
    Name,
    PerClass,
    Preset,
    Restart,
    Resume,
    Sampler,
    Seed,
    Sets,
    Steps,
    Temp,
    Trust,
    _fail,
    _flag_values,
    _one_line_errors,
    app,
    console,
    finished_runs,
    morph_flag,
)


def _stage(stage: int):
    # imported when a stage runs, not when the command starts (they import torch)
    from ..stages import s1_vqvae, s2_codes, s3_prior, s4_sample

    return {1: s1_vqvae, 2: s2_codes, 3: s3_prior, 4: s4_sample}[stage]


def _changes(old, new, prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two fingerprints."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            c for k in sorted(set(old) | set(new), key=str) for c in _changes(old.get(k), new.get(k), f"{prefix}{k}.")
        ]
    if old == new:
        return []
    shown = lambda v: json.dumps(v) if len(json.dumps(v)) <= 30 else json.dumps(v)[:27] + "..."  # noqa: E731
    return [f"{prefix[:-1]} {shown(old)} -> {shown(new)}"]


def check_nothing_finished_is_replaced(run_folder, cfg: Config) -> None:
    """`vqprior run` with other settings than the finished training stages in its folder would retrain them there and
    replace minutes of work: refused in one line that says what differs and how to keep or replace it."""
    from ..run_folder import STAGE_NAMES

    for stage in (1, 3):
        old = run_folder.manifest(stage)
        if not old or "fingerprint" not in old:
            continue
        new = _stage(stage).fingerprint(cfg)
        if new is None:  # stage 2's codes are missing: the prior is stale whatever the settings
            continue
        new = json.loads(json.dumps(new))
        changes = [c for c in _changes(old["fingerprint"], new) if not c.startswith("codes.")]
        if changes:
            what = (
                "the VQ-VAE (stage 1) and the prior (stage 3)"
                if stage == 1 and run_folder.manifest(3)
                else f"the {STAGE_NAMES[stage]} (stage {stage})"
            )
            raise UserError(
                f"{run_folder.path} holds a finished {STAGE_NAMES[stage]} made with other settings ({'; '.join(changes[:4])}"
                f"{'; ...' if len(changes) > 4 else ''}); this run would replace {what}: pass --name NEW to keep it "
                f"and train elsewhere, or --replace to retrain in this folder"
            )


def _run_stages(stages: list[int], cfg: Config, resume: str, incremental: bool, replace: bool = False) -> None:
    from ..run_folder import STAGE_NAMES, RunFolder
    from ..runtime import Runtime

    rt = Runtime.setup(cfg.run)
    reporter = ConsoleReporter() if rt.is_main else Reporter()
    run_folder = RunFolder(cfg.run_dir())
    run_dir = run_folder.path
    with run_folder.lock() if rt.is_main else contextlib.nullcontext():
        rt.barrier()  # under torchrun the other processes wait until rank 0 holds the run folder
        if incremental and resume == "require":
            if not run_folder.checkpoints():
                raise UserError(f"--resume: no interrupted stage to resume in {run_dir}; run without --resume")
            resume = "auto"
        if incremental and resume != "restart" and not replace:
            check_nothing_finished_is_replaced(run_folder, cfg)
        first = stages[0]
        if not incremental and first > 1 and not run_folder.finished(first - 1):
            others = [n for n in finished_runs(run_folder.path.parent, first - 1) if n != run_folder.path.name]
            if others:  # the run that exists, rather than training one
                raise UserError(
                    f"stage {first} needs stage {first - 1} ({STAGE_NAMES[first - 1]}), which {run_dir} does not have; "
                    f"runs that do: {', '.join(others)}: pass --name {others[0]} (or `vqprior run-stage {first - 1}` "
                    f"to train this one)"
                )
        for stage in stages:
            module = _stage(stage)
            if incremental and resume != "restart" and run_folder.is_current(stage, module.fingerprint(cfg)):
                if rt.is_main:
                    console.print(
                        f"[green]stage {stage} up to date[/] ({run_folder.stage(stage)}); skipped (--restart redoes it)"
                    )
                continue
            old = run_folder.manifest(stage) if rt.is_main else None
            t0 = time.perf_counter()
            kwargs = {"resume": resume} if stage in RESUMABLE else {}
            out = module.run(cfg, reporter=reporter, rt=rt, **kwargs)
            if rt.is_main:
                replaced = (
                    f" (replaced the {STAGE_NAMES[stage]} made {old.get('created', '?')})" if old is not None else ""
                )
                console.print(
                    f"[green]stage {stage} done[/] in {time.perf_counter() - t0:.0f}s -> {out}{replaced}",
                    soft_wrap=True,
                )
        if incremental and rt.is_main:
            from ..report.html import write_report

            evaluated = run_folder.eval_json.is_file()
            note = (
                "with the last evaluation's numbers: `vqprior eval` again to score these stages"
                if evaluated
                else "`vqprior eval` adds the quality numbers"
            )
            console.print(f"[green]report[/] -> {write_report(run_dir)} ({note})")


def _terminate(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C: temporary stage folders and the run lock are cleaned up on the way out
    raise KeyboardInterrupt


def _guarded(
    stages: list[int],
    preset,
    config,
    sets,
    name,
    labels,
    mix,
    n,
    temperature,
    seed,
    sampler,
    resume,
    restart,
    incremental: bool = False,
    guidance: Optional[str] = None,
    trust_code: bool = False,
    replace: bool = False,
) -> None:
    with (
        _one_line_errors(
            "interrupted; the stage that was running left its last checkpoint (if any) and wrote no outputs"
        ),
        trusting_code(trust_code),
    ):
        if resume and restart:
            raise UserError("--resume and --restart contradict each other; pass one")
        cfg = load_config(
            preset, config, sets, values=_flag_values(name, labels, mix, n, temperature, seed, sampler, guidance)
        )
        # _stage imports all four stage modules (torch, torchvision, triton) before SIGTERM is caught: _sigterm_unwinds
        _stage(1)
        from ..runtime.processes import lost_peer, process_place

        with _sigterm_unwinds():
            try:
                _run_stages(
                    stages, cfg, "require" if resume else "restart" if restart else "auto", incremental, replace
                )
            except RuntimeError as e:  # under torchrun: another process died or hung -> one line on every survivor
                rank, world, _, _ = process_place()
                if world > 1 and (lost := lost_peer(e, rank)) is not None:
                    raise lost from None
                raise


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the stages run, SIGTERM unwinds like Ctrl-C, so the run lock and temporary stage folders are cleaned up.
    Installed only after the imports: a KeyboardInterrupt raised inside an extension module's import can come out as
    an ImportError that a library swallows (the run then ignored the signal) or as a RuntimeError (a traceback).
    Before this point a SIGTERM simply ends the process, which has written nothing and holds no lock yet."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


RunOutDir = Annotated[
    Optional[str], typer.Option("--out-dir", help="Folder that holds the runs (run.out_dir; default artifacts).")
]


def _with_out_dir(sets: list[str], out_dir: Optional[str]) -> list[str]:
    """--out-dir as the run.out_dir override it stands for (last, so it wins over --set like any flag)."""
    return sets if out_dir is None else [*sets, f"run.out_dir={json.dumps(out_dir)}"]


@app.command("run-stage")
def run_stage(
    stage: Annotated[int, typer.Argument(min=1, max=4, help="1 VQ-VAE, 2 code maps, 3 prior, 4 samples.")],
    preset: Preset = None,
    config: ConfigFile = None,
    set_: Sets = [],
    name: Name = None,
    label: Labels = [],
    mix: Mix = None,
    per_class: PerClass = None,
    temperature: Temp = None,
    seed: Seed = None,
    sampler: Sampler = None,
    guidance: Guidance = None,
    morph: Morph = None,
    steps: Steps = None,
    resume: Resume = False,
    restart: Restart = False,
    trust_code: Trust = False,
    out_dir: RunOutDir = None,
) -> None:
    """Run one stage; it reads the earlier stages' outputs from the run folder.

    Example: vqprior run-stage 4 --label 3 --label 7 --per-class 8"""
    if stage != 4 and (
        label
        or mix
        or per_class is not None
        or temperature is not None
        or seed is not None
        or sampler is not None
        or guidance is not None
        or morph is not None
        or steps is not None
    ):
        _fail(
            "--label/--mix/--per-class/--temperature/--seed/--sampler/--guidance/--morph/--steps apply to stage 4 only; use --set for other stages"
        )
    if morph is not None:
        with _one_line_errors():
            ends = json.dumps(morph_flag(morph))
        set_ = [*set_, f"sample.morph={ends}"] + ([f"sample.morph_steps={steps}"] if steps is not None else [])
    elif steps is not None:
        _fail("--steps goes with --morph")
    if stage not in RESUMABLE and (resume or restart):
        _fail(f"--resume/--restart apply to the training stages 1 and 3; stage {stage} always runs from the start")
    _guarded(
        [stage],
        preset,
        config,
        _with_out_dir(set_, out_dir),
        name,
        label,
        mix,
        per_class,
        temperature,
        seed,
        sampler,
        resume,
        restart,
        guidance=guidance,
        trust_code=trust_code,
    )


@app.command("run")
def run_all(
    preset: Preset = None,
    config: ConfigFile = None,
    set_: Sets = [],
    name: Name = None,
    label: Labels = [],
    mix: Mix = None,
    per_class: PerClass = None,
    temperature: Temp = None,
    seed: Seed = None,
    sampler: Sampler = None,
    guidance: Guidance = None,
    resume: Resume = False,
    restart: Restart = False,
    trust_code: Trust = False,
    out_dir: RunOutDir = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Retrain finished stages whose settings changed in this run "
            "folder (without it such a run is refused: it would replace them).",
        ),
    ] = False,
) -> None:
    """Run all four stages in order (the whole pipeline on MNIST with the defaults).

    Like make: a stage whose outputs are intact and were made from the same settings and inputs is skipped,
    an interrupted one resumes from its checkpoint; --restart redoes everything. A finished VQ-VAE or prior made
    with other settings is never replaced silently: pass --name for a new folder or --replace.

    Example: vqprior run --preset quick --name quick"""
    _guarded(
        [1, 2, 3, 4],
        preset,
        config,
        _with_out_dir(set_, out_dir),
        name,
        label,
        mix,
        per_class,
        temperature,
        seed,
        sampler,
        resume,
        restart,
        incremental=True,
        guidance=guidance,
        trust_code=trust_code,
        replace=replace,
    )
