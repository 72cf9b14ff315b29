"""Medfusion in pure JAX / Flax NNX.

Importing the package has no side effects; the command lines apply the XLA:CPU setting of
:mod:`medfusion_jax.xla_cpu` themselves (:func:`medfusion_jax.command.run`).
"""
