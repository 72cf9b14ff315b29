"""The diffusion training loss (``DiffusionPipeline._step`` with the script's values, spec section 7.2).

t ~ Uniform{0, ..., T - 1} per sample, eps ~ N(0, I), z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps; the
UNet predicts eps (``estimator_objective='x_T'``) and the loss is the mean absolute error (``nn.L1Loss``).
No weighting, no variance learning, no x0 clipping.

Classifier-free-guidance dropout: with probability ``cfg_dropout`` (0.5) the *whole batch* is run
unconditionally, from one uniform draw per batch as the reference's single ``torch.rand(1)``;
``per_sample_cfg_dropout`` draws per sample instead (an option, not the reference). Unconditional means
the label embedding is left out, which the UNet's ``condition_mask`` expresses inside one compiled step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from medfusion_jax.config import DiffusionConfig
from medfusion_jax.diffusion.schedule import NoiseSchedule, q_sample
from medfusion_jax.models import UNet


def condition_keep_mask(key: jax.Array, batch: int, cfg_dropout: float, per_sample: bool = False) -> jax.Array:
    """bool [batch]: True where the label is kept; dropped with probability ``cfg_dropout``."""
    shape = (batch,) if per_sample else ()
    keep = jax.random.uniform(key, shape) >= cfg_dropout
    return jnp.broadcast_to(keep, (batch,))


def diffusion_loss(
    unet: UNet,
    schedule: NoiseSchedule,
    z0: jax.Array,
    labels: jax.Array | None,
    key: jax.Array,
    *,
    cfg_dropout: float = DiffusionConfig.cfg_dropout,
    per_sample_cfg_dropout: bool = DiffusionConfig.per_sample_cfg_dropout,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(L1 between predicted and true noise, terms) for clean latents ``z0`` [B, h, w, C].

    ``labels`` None trains an unconditional model (no label embedding at all).
    """
    key_t, key_eps, key_cfg = jax.random.split(key, 3)
    batch = z0.shape[0]
    t = jax.random.randint(key_t, (batch,), 0, schedule.timesteps)
    eps = jax.random.normal(key_eps, z0.shape, jnp.float32)
    z_t = q_sample(schedule, z0.astype(jnp.float32), t, eps)
    keep = None
    if labels is not None:
        keep = condition_keep_mask(key_cfg, batch, cfg_dropout, per_sample_cfg_dropout)
    pred = unet(z_t, t, labels, keep).astype(jnp.float32)
    loss = jnp.mean(jnp.abs(pred - eps))
    terms = {"conditioned_fraction": jnp.mean(keep.astype(jnp.float32)) if keep is not None else jnp.zeros(())}
    return loss, terms
