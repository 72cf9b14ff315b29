"""Medfusion in pure JAX / Flax NNX."""

from medfusion_jax.xla_cpu import apply_cpu_defaults

# Before any JAX computation starts XLA's CPU backend (see medfusion_jax/xla_cpu.py).
apply_cpu_defaults()
