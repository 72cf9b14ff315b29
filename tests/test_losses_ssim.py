"""The fast SSIM of the autoencoder loss equals the plain 11-slice-sum implementation, values and gradients.

Both filtering paths are covered: the banded matrix product (axes up to ``BAND_MATMUL_MAX_LEN``) and the
shifted sum with its hand-written gradient (longer axes), plus pytorch-msssim's rule that an axis
shorter than the window is left unfiltered.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medfusion_jax.losses import ssim as ssim_lib
from medfusion_jax.losses.ssim import BAND_MATMUL_MAX_LEN, _ssim_reference, gaussian_filter_valid, ssim

LONG = BAND_MATMUL_MAX_LEN + 12  # takes the shifted-sum path


def pair(shape, seed=0, noise=0.2):
    rng = np.random.default_rng(seed)
    target = rng.uniform(size=shape).astype(np.float32)
    pred = np.clip(target + noise * rng.normal(size=shape), 0, 1).astype(np.float32)
    return jnp.asarray(pred), jnp.asarray(target)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("shape", [
    (3, 32, 32, 3),        # band matrix on both axes
    (2, 40, LONG, 1),      # band matrix on H, shifted sum on W
    (1, LONG, LONG, 2),    # shifted sum on both
    (2, 8, 48, 3),         # H shorter than the window: only W is filtered
    (2, 11, 11, 2),        # exactly one valid position
])
def test_values_equal_the_slice_sum(shape):
    pred, target = pair(shape)
    # nonnegative=False: the ReLU would hide differences of negative per-channel values.
    new = jax.jit(ssim, static_argnums=(2, 3))(pred, target, 1.0, False)
    old = jax.jit(_ssim_reference, static_argnums=(2, 3))(pred, target, 1.0, False)
    assert new.shape == (shape[0],)
    np.testing.assert_allclose(np.asarray(new), np.asarray(old), rtol=1e-6, atol=1e-7)


def test_negative_ssim_and_data_range():
    pred, target = pair((2, 24, 24, 3), seed=1)
    inverted = 1.0 - target
    raw = ssim(inverted, target, nonnegative=False)
    assert np.all(np.asarray(raw) < 0)
    np.testing.assert_array_equal(np.asarray(ssim(inverted, target)), 0.0)
    np.testing.assert_allclose(np.asarray(ssim(2 * pred, 2 * target, data_range=2.0)),
                               np.asarray(_ssim_reference(2 * pred, 2 * target, data_range=2.0)), rtol=1e-6)


def test_gradients_equal_the_slice_sum():
    pred, target = pair((2, 24, LONG, 2), seed=2)  # both paths: band matrix on H, shifted sum on W

    def grad_of(fn):
        return jax.jit(jax.grad(lambda p: jnp.sum(1.0 - fn(p, target))))(pred)

    assert rel(grad_of(ssim), grad_of(_ssim_reference)) < 1e-5


def test_gradient_of_a_gradient(monkeypatch):
    # VAEGAN's adaptive weight takes a gradient of the loss inside the differentiated generator loss:
    # the hand-written gradient of the shifted sum must itself be differentiable. Compared with the
    # band-matrix path (automatic derivatives throughout) on the same input.
    pred, target = pair((1, 12, LONG, 1), seed=3)

    def second_order():
        def f(scale):
            inner = jax.grad(lambda p: jnp.sum(ssim(scale * p, target)))(pred)
            return jnp.sum(inner**2)
        return jax.grad(f)(jnp.float32(0.9))

    shifted = second_order()
    monkeypatch.setattr(ssim_lib, "BAND_MATMUL_MAX_LEN", 10**6)
    banded = second_order()
    assert np.isfinite(float(shifted)) and rel(shifted, banded) < 1e-4


def test_filter_matches_the_reference_filter():
    x, _ = pair((2, 30, LONG, 3), seed=4)
    window = ssim_lib.gaussian_window()
    new = gaussian_filter_valid(x, window)
    old = ssim_lib._gaussian_filter_valid_reference(x, window)
    assert new.shape == old.shape == (2, 20, LONG - 10, 3)
    assert rel(new, old) < 1e-6
    band = ssim_lib.band_matrix(20, window)
    assert band.shape == (20, 10) and np.allclose(band.sum(axis=0), 1.0, atol=1e-6)
