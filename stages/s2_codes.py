"""Stage 2, encode the dataset into code maps (and labels): `python stages/s2_codes.py [options]` = `vqprior run-stage 2 [options]`."""

from _program import run_stage

run_stage(2)
