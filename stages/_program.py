"""What each stage program here does: `python stages/sN_*.py [options]` is `vqprior run-stage N [options]`.

The stages' code is the package vqprior.stages (vqprior/stages/sN_*.py: run(cfg, reporter)); these programs are
the stages as commands of their own, from a source checkout (no install needed) or beside an installed vqprior."""

import sys
from pathlib import Path


def run_stage(stage: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's vqprior, when not installed
    from vqprior.cli import main

    sys.argv = ["vqprior", "run-stage", str(stage), *sys.argv[1:]]
    main()
