"""DDIM sampler: determinism, eta, guidance and replay of the reference's recorded noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medfusion_jax.diffusion.sampler import ddim_sample, guided_eps_fn, sample_latents
from medfusion_jax.diffusion.schedule import make_schedule
from medfusion_jax.models import UNet

SCHEDULE = make_schedule()


@pytest.fixture(scope="module")
def unet():
    model = UNet(4, 4, (32, 32, 64, 64), time_emb_dim=64, num_classes=2, rngs=nnx.Rngs(0))
    # Non-zero output layer: a fresh model predicts exactly 0, which would hide sampler bugs.
    model.outc.conv.kernel[...] = 0.1 * jax.random.normal(jax.random.key(1), model.outc.conv.kernel.shape)
    return model


def draw(unet, seed, **kw):
    kw = {"num_steps": 8, "condition": jnp.array([0, 1]), **kw}
    return np.asarray(sample_latents(unet, SCHEDULE, jax.random.key(seed), (2, 8, 8, 4), **kw))


def test_same_key_same_samples_other_key_other_samples(unet):
    a, b, c = draw(unet, 0), draw(unet, 0), draw(unet, 1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2


def test_eta_zero_is_deterministic_given_the_start(unet):
    x_T = jax.random.normal(jax.random.key(5), (2, 8, 8, 4))
    a = draw(unet, 0, eta=0.0, x_T=x_T)
    b = draw(unet, 1, eta=0.0, x_T=x_T)  # a different key only changes the (unused) step noise
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert np.abs(a - draw(unet, 1, eta=1.0, x_T=x_T)).max() > 1e-3


def test_last_step_returns_x0_and_clipping_bounds_it(unet):
    x_T = jax.random.normal(jax.random.key(5), (2, 8, 8, 4))
    final, trace = sample_latents(unet, SCHEDULE, jax.random.key(0), (2, 8, 8, 4), jnp.array([0, 1]),
                                  num_steps=5, x_T=x_T, trace=True)
    assert list(np.asarray(trace["t"])) == [999, 749, 499, 249, 0]
    np.testing.assert_allclose(final, trace["x0"][-1], atol=1e-6)
    clipped, trace = sample_latents(unet, SCHEDULE, jax.random.key(0), (2, 8, 8, 4), jnp.array([0, 1]),
                                    num_steps=5, x_T=3 * x_T, clip_x0=True, trace=True)
    assert float(jnp.abs(trace["x0"]).max()) <= 1.0 and float(jnp.abs(clipped).max()) <= 1.0


def test_guidance_combines_two_passes(unet):
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 4))
    t, labels = jnp.array([700, 700]), jnp.array([1, 0])
    guided = guided_eps_fn(unet, labels, 8.0)(x, t)
    cond, uncond = unet(x, t, labels), unet(x, t, None)
    np.testing.assert_allclose(guided, uncond + 8.0 * (cond - uncond), atol=1e-4)
    # An explicit "unconditional label" (the streamlit apps pass 1 - label) replaces the omitted embedding.
    other = guided_eps_fn(unet, labels, 8.0, 1 - labels)(x, t)
    flipped = unet(x, t, 1 - labels)
    np.testing.assert_allclose(other, flipped + 8.0 * (cond - flipped), atol=1e-4)
    # Scale 1 and no condition are a single plain pass.
    np.testing.assert_allclose(guided_eps_fn(unet, labels, 1.0)(x, t), cond, atol=1e-6)
    np.testing.assert_allclose(guided_eps_fn(unet, None, 8.0)(x, t), uncond, atol=1e-6)


def test_bad_arguments_are_named():
    x = jnp.zeros((1, 8, 8, 4))
    with pytest.raises(ValueError, match="step_noise must have shape"):
        ddim_sample(lambda x, t: x, SCHEDULE, x, num_steps=3, step_noise=jnp.zeros((3, 1, 8, 8, 4)))
    with pytest.raises(ValueError, match="needs `key`"):
        ddim_sample(lambda x, t: x, SCHEDULE, x, num_steps=3)
    with pytest.raises(ValueError, match="between 1 and 1000"):
        ddim_sample(lambda x, t: x, SCHEDULE, x, num_steps=0)
