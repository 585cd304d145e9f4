"""Stage 4, sample code maps and decode them into images: `python stages/s4_sample.py [options]` = `vqprior run-stage 4 [options]`."""

from _program import run_stage

run_stage(4)
