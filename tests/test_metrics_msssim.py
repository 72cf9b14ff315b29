"""MS-SSIM (TorchMetrics 0.11, normalize='relu'), SSIM, MSE and mean +- std, of images and of volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medfusion_jax.metrics.msssim import (
    gaussian_kernel_1d,
    gaussian_window,
    mean_std,
    ms_ssim,
    mse_per_image,
    msssim_size_error,
    ssim,
)

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


# -- volumes (NDHWC): TorchMetrics 0.11's 5-D branch, against a float64 scipy reference ------------------


def _volumes(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random volumes in [0, 1] and a noisy, dimmer copy (so the data ranges differ per volume)."""
    rng = np.random.default_rng(seed)
    target = ndimage.gaussian_filter(rng.random(shape), sigma=(0, 2, 2, 2, 0))
    target = (target - target.min()) / (target.max() - target.min())
    target[-1] *= 0.5  # another data range for the last volume
    preds = np.clip(0.9 * target + 0.05 * rng.normal(size=shape), 0, 1)
    return preds.astype(np.float32), target.astype(np.float32)


def _reference_terms(preds: np.ndarray, target: np.ndarray, data_range=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and contrast-sensitivity per volume, float64: the 1-D Gaussian correlated along D, H and W,
    the borders cropped (valid filtering), data range per volume over all voxels."""
    g = gaussian_kernel_1d(1.5).astype(np.float64)
    r = len(g) // 2
    p, t = preds.astype(np.float64), target.astype(np.float64)

    def filt(x):
        for axis in (1, 2, 3):
            x = ndimage.correlate1d(x, g, axis=axis, mode="constant")
        return x[:, r:-r, r:-r, r:-r]

    if data_range is None:
        axes = (1, 2, 3, 4)
        data_range = np.maximum(np.ptp(p, axis=axes), np.ptp(t, axis=axes))[:, None, None, None, None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_p, mu_t = filt(p), filt(t)
    var_p, var_t, cov = filt(p * p) - mu_p**2, filt(t * t) - mu_t**2, filt(p * t) - mu_p * mu_t
    cs = (2 * cov + c2) / (var_p + var_t + c2)
    sim = (2 * mu_p * mu_t + c1) / (mu_p**2 + mu_t**2 + c1) * cs
    return sim.mean(axis=(1, 2, 3, 4)), cs.mean(axis=(1, 2, 3, 4))


def _reference_ms_ssim(preds: np.ndarray, target: np.ndarray, betas) -> np.ndarray:
    """relu-normalised MS-SSIM with 2x2x2 average pooling (floor) between scales."""
    p, t = preds.astype(np.float64), target.astype(np.float64)
    terms = []
    for scale in range(len(betas)):
        sim, cs = _reference_terms(p, t)
        terms.append(np.maximum(sim if scale == len(betas) - 1 else cs, 0))
        b, d, h, w, c = p.shape
        p, t = (x[:, : d // 2 * 2, : h // 2 * 2, : w // 2 * 2].reshape(b, d // 2, 2, h // 2, 2, w // 2, 2, c)
                .mean(axis=(2, 4, 6)) for x in (p, t))
    return np.prod(np.stack(terms) ** np.asarray(betas)[:, None], axis=0)


def test_volume_ssim_matches_a_scipy_reference():
    preds, target = _volumes((2, 20, 23, 26, 2), seed=0)  # unequal sides, two channels
    expected = _reference_terms(preds, target)[0]
    got = np.asarray(ssim(preds, target))
    assert got.shape == (2,) and 0.3 < got.min() and got.max() < 0.99
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    fixed = _reference_terms(preds, target, data_range=1.0)[0]
    np.testing.assert_allclose(np.asarray(ssim(preds, target, data_range=1.0)), fixed, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ssim(target, target)), 1.0, atol=1e-6)


@pytest.mark.parametrize("betas, shape", [((0.4, 0.6), (2, 22, 24, 23, 1)), ((0.2, 0.3, 0.5), (1, 44, 45, 46, 1))])
def test_volume_ms_ssim_matches_a_scipy_reference(betas, shape):
    preds, target = _volumes(shape, seed=1)
    expected = _reference_ms_ssim(preds, target, betas)
    got = np.asarray(ms_ssim(preds, target, betas=betas))
    assert 0.3 < got.min() and got.max() < 0.999
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ms_ssim(target, target, betas=betas)), 1.0, atol=1e-5)


def test_volume_ms_ssim_size_rule():
    # TorchMetrics' rule on every side (depth included): side // (scales - 1)^2 > 10.
    assert msssim_size_error((44, 44, 44), scales=3) is None
    assert "depth must be larger than 40, got 43" in msssim_size_error((43, 44, 44), scales=3)
    assert "width must be larger than 40" in msssim_size_error((44, 44, 40), scales=3)
    assert "volume height must be larger than 160" in msssim_size_error((176, 170, 176))
    assert msssim_size_error((176, 176, 176)) is None
    # 2 scales: the rule lets 11-21 through, but the coarsest scale would be smaller than the window.
    assert "at least 22" in msssim_size_error((21, 22, 22), scales=2)
    assert msssim_size_error((22, 22, 22), scales=2) is None
    small = np.zeros((1, 43, 44, 44, 1), np.float32)
    with pytest.raises(ValueError, match="volume depth must be larger than 40"):
        ms_ssim(small, small, betas=(0.2, 0.3, 0.5))
    with pytest.raises(ValueError, match="at least 22"):
        ms_ssim(np.zeros((1, 16, 16, 1)), np.zeros((1, 16, 16, 1)), betas=(0.5, 0.5))
    with pytest.raises(ValueError, match="same shape"):
        ssim(np.zeros((1, 16, 16, 16, 1)), np.zeros((1, 16, 16, 16, 2)))
    with pytest.raises(ValueError, match="NDHWC"):
        ssim(np.zeros((1, 2, 16, 16, 16, 1)), np.zeros((1, 2, 16, 16, 16, 1)))


def test_volume_mse_matches_numpy():
    preds, target = _volumes((3, 9, 10, 11, 2), seed=2)
    expected = ((preds.astype(np.float64) - target) ** 2).mean(axis=(1, 2, 3, 4))
    np.testing.assert_allclose(np.asarray(mse_per_image(preds, target)), expected, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(mse_per_image(target, target)), 0.0)
