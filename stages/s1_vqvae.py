"""Stage 1, train the VQ-VAE (encoder, codebook, decoder): `python stages/s1_vqvae.py [options]` = `vqprior run-stage 1 [options]`."""

from _program import run_stage

run_stage(1)
