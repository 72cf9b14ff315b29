"""DDIM sampling (the reference's ``DiffusionPipeline.denoise`` with ``use_ddim=True``, spec section 8).

The whole loop is one ``lax.scan`` over the steps, so a sampler call compiles once and runs without
Python in the loop. Timesteps are floor(linspace(0, T - 1, S)) visited in reverse; at every step but
the last, x <- sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma n with
sigma = eta sqrt((1 - a/a')(1 - a')/(1 - a)); the last step (t = 0) returns the posterior mean
coef1[0] x0 + coef2[0] x, which equals x0. Defaults follow the reference: eta = 1, no x0 clipping.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from medfusion_jax.diffusion.schedule import NoiseSchedule, ddim_timesteps, x0_from_eps

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def ddim_sample(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_T: jax.Array,
    *,
    num_steps: int = 150,
    eta: float = 1.0,
    clip_x0: bool = False,
    key: jax.Array | None = None,
    step_noise: jax.Array | None = None,
    trace: bool = False,
    per_sample_keys: bool = False,
):
    """Run DDIM from ``x_T``; ``eps_fn(x, t)`` predicts the noise for int timesteps t [N].

    The noise of the update after step i comes from ``key`` (split once per step) or, to replay a
    recorded run, from ``step_noise`` [num_steps - 1, *x_T.shape]. With ``per_sample_keys``, ``key`` is an
    array of N keys, one per sample, and sample j's noise comes from its own key alone (split once per
    step), so a sample does not depend on the batch it is drawn in. With ``trace`` also returns a dict of
    per-step arrays ``x_t``, ``t``, ``x0``, ``eps`` (leading axis = step) for inspection and parity tests.
    """
    taus = ddim_timesteps(num_steps, schedule.timesteps)[::-1]
    batch = x_T.shape[0]
    if step_noise is not None:
        if step_noise.shape != (num_steps - 1, *x_T.shape):
            raise ValueError(f"step_noise must have shape {(num_steps - 1, *x_T.shape)}, got {step_noise.shape}")
        per_step_noise = step_noise
    elif num_steps > 1:
        if key is None:
            raise ValueError("DDIM with eta sampling needs `key` (or recorded `step_noise`)")
        if per_sample_keys:
            if key.shape != (batch,):
                raise ValueError(f"per_sample_keys needs one key per sample, shape {(batch,)}, got {key.shape}")
            # [N, S - 1] keys -> [S - 1, N]: the scan hands step i the N keys of that step.
            per_step_noise = jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, num_steps - 1))(key), 0, 1)
        else:
            per_step_noise = jax.random.split(key, num_steps - 1)
    else:
        per_step_noise = jnp.zeros((0,), jnp.uint32)
    ac = schedule.alphas_cumprod

    def predict(x, t):
        t_vec = jnp.full((batch,), t, jnp.int32)
        eps = eps_fn(x, t_vec)
        return eps, x0_from_eps(schedule, x, t_vec, eps, clip=clip_x0)

    def step(x, inputs):
        t, t_next, noise_or_key = inputs
        eps, x0 = predict(x, t)
        a, a_next = ac[t], ac[t_next]
        sigma = eta * jnp.sqrt((1 - a / a_next) * (1 - a_next) / (1 - a))
        c = jnp.sqrt(1 - a_next - sigma**2)
        if step_noise is not None:
            noise = noise_or_key
        elif per_sample_keys:
            noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(noise_or_key)
        else:
            noise = jax.random.normal(noise_or_key, x.shape, x.dtype)
        x_next = x0 * jnp.sqrt(a_next) + c * eps + sigma * noise
        return x_next, (dict(x_t=x, t=t, x0=x0, eps=eps) if trace else None)

    taus_j = jnp.asarray(taus.copy())
    x, per_step = jax.lax.scan(step, x_T, (taus_j[:-1], taus_j[1:], per_step_noise))
    t_last = int(taus[-1])
    eps, x0 = predict(x, t_last)
    final = schedule.posterior_mean_coef1[t_last] * x0 + schedule.posterior_mean_coef2[t_last] * x
    if not trace:
        return final
    last = dict(x_t=x[None], t=jnp.asarray([t_last]), x0=x0[None], eps=eps[None])
    if per_step is None:
        return final, last
    return final, {k: jnp.concatenate([per_step[k], last[k]]) for k in per_step}


def guided_eps_fn(
    model: Callable,
    condition: jax.Array | None,
    guidance_scale: float = 1.0,
    uncond_condition: jax.Array | None = None,
) -> EpsFn:
    """The noise predictor of the reference's sampler, with classifier-free guidance.

    Without a condition, or with scale 1, one pass: model(x, t, condition). Otherwise
    eps_u + s (eps_c - eps_u), where eps_u uses ``uncond_condition`` (default: no label embedding). Both
    passes run as one batch of 2N, which equals two separate passes (every layer is per-sample).
    """
    if condition is None or guidance_scale == 1.0:
        return lambda x, t: model(x, t, condition)

    def eps_fn(x, t):
        n = x.shape[0]
        x2, t2 = jnp.concatenate([x, x]), jnp.concatenate([t, t])
        if uncond_condition is None:
            labels = jnp.concatenate([condition, condition])
            mask = jnp.concatenate([jnp.ones((n,), bool), jnp.zeros((n,), bool)])
        else:
            labels, mask = jnp.concatenate([condition, uncond_condition]), None
        eps = model(x2, t2, labels, mask)
        eps_c, eps_u = eps[:n], eps[n:]
        return eps_u + guidance_scale * (eps_c - eps_u)

    return eps_fn


@partial(nnx.jit, static_argnames=("shape", "num_steps", "clip_x0", "guidance_scale", "trace", "per_sample_keys"))
def sample_latents(
    model: nnx.Module,
    schedule: NoiseSchedule,
    key: jax.Array,
    shape: tuple[int, ...],
    condition: jax.Array | None = None,
    *,
    num_steps: int = 150,
    eta: float = 1.0,
    clip_x0: bool = False,
    guidance_scale: float = 1.0,
    uncond_condition: jax.Array | None = None,
    x_T: jax.Array | None = None,
    step_noise: jax.Array | None = None,
    trace: bool = False,
    per_sample_keys: bool = False,
):
    """Draw latents of ``shape`` (NHWC) from the UNet ``model``: x_T ~ N(0, I) from ``key``, then DDIM.

    Same key -> same samples. ``x_T``/``step_noise`` replace the drawn noise (to replay a recorded run).
    ``per_sample_keys``: ``key`` holds one key per sample ([N]); sample j's start x_T[j] and its step
    noises are drawn from ``key[j]`` alone, so each sample is a function of its key (and the model and
    settings), not of the other samples, its position in the batch, or how the batch is sharded (up to
    float32 rounding where the batch size changes how the network's convolutions are computed).
    """
    if per_sample_keys:
        if key.shape != shape[:1]:
            raise ValueError(f"per_sample_keys needs one key per sample, shape {shape[:1]}, got {key.shape}")
        init_key, step_key = jnp.swapaxes(jax.vmap(jax.random.split)(key), 0, 1)
        if x_T is None:
            x_T = jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(init_key)
    else:
        init_key, step_key = jax.random.split(key)
        if x_T is None:
            x_T = jax.random.normal(init_key, shape, jnp.float32)
    eps_fn = guided_eps_fn(model, condition, guidance_scale, uncond_condition)
    return ddim_sample(
        eps_fn, schedule, x_T, num_steps=num_steps, eta=eta, clip_x0=clip_x0,
        key=step_key, step_noise=step_noise, trace=trace, per_sample_keys=per_sample_keys,
    )
