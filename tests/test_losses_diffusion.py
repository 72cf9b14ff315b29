"""The diffusion training loss: noising bookkeeping, CFG dropout per batch (or per sample), L1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medfusion_jax.diffusion.schedule import make_schedule
from medfusion_jax.losses.diffusion import condition_keep_mask, diffusion_loss


@pytest.fixture(scope="module")
def schedule():
    return make_schedule()


def test_an_exact_noise_predictor_has_zero_loss(schedule):
    """The loss compares the prediction with the noise that built z_t from z_0 at the drawn t."""
    z0 = jax.random.normal(jax.random.key(0), (6, 4, 4, 2))

    def oracle(z_t, t, labels, keep):
        a = schedule.sqrt_alphas_cumprod[t][:, None, None, None]
        s = schedule.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
        return (z_t - a * z0) / s

    loss, _ = diffusion_loss(oracle, schedule, z0, jnp.zeros((6,), jnp.int32), jax.random.key(1))
    assert float(loss) < 1e-3
    wrong, _ = diffusion_loss(lambda z_t, t, labels, keep: jnp.zeros_like(z_t), schedule, z0, None, jax.random.key(1))
    assert abs(float(wrong) - np.sqrt(2 / np.pi)) < 0.1  # E|eps| of a standard normal


def test_dropout_is_decided_once_per_batch_by_default():
    masks = np.stack([np.asarray(condition_keep_mask(jax.random.key(i), 16, 0.5)) for i in range(400)])
    assert np.all(masks.all(axis=1) | (~masks).all(axis=1))
    assert 0.4 < masks[:, 0].mean() < 0.6
    per_sample = np.stack([np.asarray(condition_keep_mask(jax.random.key(i), 16, 0.5, per_sample=True))
                           for i in range(50)])
    assert np.any(per_sample.any(axis=1) & ~per_sample.all(axis=1))
    assert 0.4 < per_sample.mean() < 0.6
    assert np.asarray(condition_keep_mask(jax.random.key(0), 8, 0.0)).all()
    assert not np.asarray(condition_keep_mask(jax.random.key(0), 8, 1.0)).any()


def test_dropout_reaches_the_unet_as_its_condition_mask(schedule):
    """Dropped labels are passed as a False ``condition_mask`` (the UNet then omits the label embedding);
    without labels the UNet gets no condition at all."""
    seen = []

    def recorder(z_t, t, labels, keep):
        seen.append((labels, keep))
        return jnp.zeros_like(z_t)

    z0 = jnp.zeros((4, 2, 2, 1))
    labels = jnp.asarray([0, 1, 1, 0])
    for cfg_dropout in (1.0, 0.0):
        _, terms = diffusion_loss(recorder, schedule, z0, labels, jax.random.key(0), cfg_dropout=cfg_dropout)
        np.testing.assert_array_equal(np.asarray(seen[-1][0]), labels)
        np.testing.assert_array_equal(np.asarray(seen[-1][1]), np.full(4, cfg_dropout == 0.0))
        assert float(terms["conditioned_fraction"]) == 1.0 - cfg_dropout
    diffusion_loss(recorder, schedule, z0, None, jax.random.key(0))
    assert seen[-1] == (None, None)
