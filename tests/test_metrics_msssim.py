"""MS-SSIM (TorchMetrics 0.11, normalize='relu'), SSIM, MSE and mean +- std."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfusion_jax.metrics.msssim import gaussian_window, mean_std, ms_ssim, mse_per_image, ssim

DATA = Path(__file__).resolve().parent / "data" / "metrics"


@pytest.fixture(scope="module")
def pairs():
    """The reference's image pairs in [0, 1] and TorchMetrics 0.11's values for them."""
    with np.load(DATA / "msssim_reference.npz") as ref, np.load(DATA / "inception_reference.npz") as inc:
        y0, y1, x0, x1 = ref["crop"]
        target = inc["images_299x299"][ref["target_index"], y0:y1, x0:x1].astype(np.float32) / 255
        return ref["preds"].astype(np.float32) / 255, target, ref["msssim"], ref["mse"]


def test_matches_torchmetrics_0_11(pairs):
    preds, target, expected, _ = pairs
    np.testing.assert_allclose(np.asarray(ms_ssim(preds, target)), expected, rtol=0, atol=2e-5)


def test_per_image_equals_one_at_a_time(pairs):
    # The reference called the metric on single images: data ranges are per image, not per batch.
    preds, target, _, _ = pairs
    batch = np.asarray(ms_ssim(preds, target))
    single = [float(ms_ssim(preds[i : i + 1], target[i : i + 1])[0]) for i in range(len(preds))]
    np.testing.assert_allclose(batch, single, rtol=1e-6)


def test_mse_matches_reference(pairs):
    preds, target, _, expected = pairs
    np.testing.assert_allclose(np.asarray(mse_per_image(preds, target)), expected, rtol=1e-6)


def test_image_with_itself_is_one(pairs):
    _, target, _, _ = pairs
    np.testing.assert_allclose(np.asarray(ms_ssim(target, target)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ssim(target, target)), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mse_per_image(target, target)), 0.0)


def test_distortions_order_as_expected(pairs):
    _, target, _, _ = pairs
    img = np.repeat(target[:1], 4, axis=0)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=img.shape).astype(np.float32)
    levels = np.array([0.01, 0.05, 0.1, 0.3], np.float32)[:, None, None, None]
    noisy = np.clip(img + levels * noise, 0, 1)
    scores = np.asarray(ms_ssim(noisy, img))
    assert np.all(np.diff(scores) < 0), scores
    assert scores[0] > 0.98 and scores[-1] < 0.5
    errors = np.asarray(mse_per_image(noisy, img))
    assert np.all(np.diff(errors) > 0)


def test_relu_keeps_anticorrelated_images_finite(pairs):
    _, target, _, _ = pairs
    inverted = 1 - target
    relu = np.asarray(ms_ssim(inverted, target))
    assert np.all(np.isfinite(relu)) and np.all(relu >= 0)
    # Without the ReLU, negative contrast terms raised to fractional powers are NaN.
    assert np.any(np.isnan(np.asarray(ms_ssim(inverted, target, normalize=None))))


def test_gaussian_window():
    w = gaussian_window(1.5)
    assert w.shape == (11, 11)
    assert w.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(w, w.T)
    assert w[5, 5] == w.max()


def test_size_and_shape_errors():
    small = np.zeros((1, 160, 200, 3), np.float32)
    with pytest.raises(ValueError, match="height must be larger than 160"):
        ms_ssim(small, small)
    with pytest.raises(ValueError, match="same shape"):
        ms_ssim(np.zeros((1, 192, 192, 3)), np.zeros((1, 192, 192, 1)))
    with pytest.raises(ValueError, match="normalize"):
        ms_ssim(np.zeros((1, 192, 192, 3)), np.zeros((1, 192, 192, 3)), normalize="tanh")


def test_mean_std_is_unbiased():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, np.std([1, 2, 3, 4], ddof=1)))
    with pytest.raises(ValueError):
        mean_std([])
