"""Stage 3, train the prior on the code maps: `python stages/s3_prior.py [options]` = `vqprior run-stage 3 [options]`."""

from _program import run_stage

run_stage(3)
