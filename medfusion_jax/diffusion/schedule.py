"""Gaussian noise schedules (``GaussianNoiseScheduler`` of the reference, spec section 7.1).

All buffers are computed in float64 with numpy and then cast to float32, exactly as the reference
registers them, so the constants agree bit for bit with the PyTorch original.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from medfusion_jax.config import ScheduleConfig

# The paper's configuration, from its one definition (ScheduleConfig): 1000 steps, scaled-linear 0.002 -> 0.02.
PAPER = dataclasses.asdict(ScheduleConfig())


def schedule_from_config(config: ScheduleConfig) -> NoiseSchedule:
    """The schedule a run's ``ScheduleConfig`` describes (the one place its fields are expanded)."""
    return make_schedule(config.strategy, config.timesteps, config.beta_start, config.beta_end)


def betas_for(strategy: str, timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """The float64 beta sequence of a schedule strategy: 'scaled_linear', 'linear' or 'cosine'."""
    if strategy == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=np.float64) ** 2
    if strategy == "linear":
        return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    if strategy == "cosine":
        # Nichol & Dhariwal with s = 0.008, betas clipped to [0, 0.999]; beta_start/end are unused.
        s = 0.008
        x = np.linspace(0, timesteps, timesteps + 1, dtype=np.float64)
        alphas_cumprod = np.cos(((x / timesteps) + s) / (1 + s) * np.pi * 0.5) ** 2
        alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
        return np.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, 0.999)
    raise ValueError(f"unknown schedule strategy {strategy!r}: use 'scaled_linear', 'linear' or 'cosine'")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """The registered buffers of the reference scheduler, float32 arrays of length T."""

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    posterior_variance: jax.Array

    @property
    def timesteps(self) -> int:
        return self.betas.shape[0]


def make_schedule(
    strategy: str = PAPER["strategy"],
    timesteps: int = PAPER["timesteps"],
    beta_start: float = PAPER["beta_start"],
    beta_end: float = PAPER["beta_end"],
) -> NoiseSchedule:
    """Compute every buffer in float64 and cast to float32 (defaults: the paper's schedule)."""
    betas = betas_for(strategy, timesteps, beta_start, beta_end)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    buffers = dict(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1.0),
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        posterior_variance=betas * (1.0 - ac_prev) / (1.0 - ac),
    )
    return NoiseSchedule(**{k: jnp.asarray(v.astype(np.float32)) for k, v in buffers.items()})


def _per_sample(buffer: jax.Array, t: jax.Array, like: jax.Array) -> jax.Array:
    """buffer[t] reshaped to broadcast against ``like`` (batch first)."""
    return buffer[t].reshape((-1,) + (1,) * (like.ndim - 1))


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; t = 0 already means one noising step."""
    return (_per_sample(schedule.sqrt_alphas_cumprod, t, x0) * x0
            + _per_sample(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise)


def x0_from_eps(schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, eps: jax.Array,
                clip: bool = False) -> jax.Array:
    """x0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps, clamped to [-1, 1] only when ``clip``."""
    x0 = (_per_sample(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t
          - _per_sample(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)
    return jnp.clip(x0, -1.0, 1.0) if clip else x0


def ddim_timesteps(num_steps: int, timesteps: int = 1000) -> np.ndarray:
    """floor(linspace(0, T - 1, S)) as ``torch.linspace(..., dtype=long)``; DDIM visits them in reverse."""
    if not 1 <= num_steps <= timesteps:
        raise ValueError(f"DDIM steps must be between 1 and {timesteps}, got {num_steps}")
    return np.floor(np.linspace(0, timesteps - 1, num_steps, dtype=np.float64)).astype(np.int32)
