"""Noise schedule, forward process and the DDIM sampler."""
