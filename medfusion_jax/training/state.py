"""The ``progress`` part of every train state (step counter, the run's random key) and the jitted step.

Each step draws its randomness from ``fold_in(run key, step)``: nothing random is carried from step to
step, so a run restored from a checkpoint draws exactly what an uninterrupted run draws.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from medfusion_jax.mesh import replicated


def new_progress(seed: int) -> dict[str, jax.Array]:
    """Step 0 and the run's key (stored as raw uint32 key data, which checkpoints hold as-is)."""
    return {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(seed))}


def step_key(progress: dict[str, jax.Array]) -> jax.Array:
    """The key of the current step."""
    return jax.random.fold_in(jax.random.wrap_key_data(progress["rng"]), progress["step"])


def advance(progress: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {"step": progress["step"] + 1, "rng": progress["rng"]}


def compiled_step(fn: Callable, static: dict[str, Any], spec: Any, shardings: Any, mesh: Mesh) -> Callable:
    """``fn(state, constants, batch, spec=spec, **static)`` under ``jax.jit``: the train state is donated
    and the new state keeps ``shardings``; metrics come back replicated."""
    leaves, treedef = jax.tree.flatten(shardings)
    return _jitted_step(fn, tuple(sorted(static.items())), spec, treedef, tuple(leaves), replicated(mesh))


@functools.lru_cache(maxsize=32)
def _jitted_step(fn, static, spec, sharding_treedef, sharding_leaves, metrics_sharding) -> Callable:
    # Cached on everything that defines the program, so that a second run in one process (a resumed
    # run, a test) reuses the compiled executable instead of compiling again.
    shardings = jax.tree.unflatten(sharding_treedef, sharding_leaves)
    return jax.jit(functools.partial(fn, spec=spec, **dict(static)), donate_argnums=0,
                   out_shardings=(shardings, metrics_sharding))
