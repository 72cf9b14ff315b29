"""SSIM as ``pytorch_msssim.ssim`` computes it in the reference's autoencoder loss (spec section 4.3).

Gaussian window 11, sigma 1.5, applied separably with no padding ("valid"); K = (0.01, 0.03); the SSIM
map is averaged per channel, optionally passed through ReLU (``nonnegative_ssim=True``), then averaged
over channels: one value per image. Inputs are NHWC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

WIN_SIZE, WIN_SIGMA = 11, 1.5
K1, K2 = 0.01, 0.03


def gaussian_window(size: int = WIN_SIZE, sigma: float = WIN_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian of pytorch-msssim (centred on size // 2)."""
    coords = np.arange(size, dtype=np.float32) - size // 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def gaussian_filter_valid(x: jax.Array, window: np.ndarray) -> jax.Array:
    """Separable per-channel filtering without padding along H then W of an NHWC tensor.

    Like pytorch-msssim, an axis shorter than the window is left unfiltered (it warns and skips it).
    """
    w = jnp.asarray(window)
    for axis in (1, 2):
        if x.shape[axis] < w.shape[0]:
            continue
        n_out = x.shape[axis] - w.shape[0] + 1
        x = sum(w[i] * jax.lax.slice_in_dim(x, i, i + n_out, axis=axis) for i in range(w.shape[0]))
    return x


def ssim_per_channel(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(SSIM, contrast-structure) per image and channel, [N, C] each."""
    window = gaussian_window()
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    mu1, mu2 = gaussian_filter_valid(x, window), gaussian_filter_valid(y, window)
    sigma1_sq = gaussian_filter_valid(x * x, window) - mu1**2
    sigma2_sq = gaussian_filter_valid(y * y, window) - mu2**2
    sigma12 = gaussian_filter_valid(x * y, window) - mu1 * mu2
    cs_map = (2 * sigma12 + c2) / (sigma1_sq + sigma2_sq + c2)
    ssim_map = (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * cs_map
    return jnp.mean(ssim_map, axis=(1, 2)), jnp.mean(cs_map, axis=(1, 2))


def ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0, nonnegative: bool = True) -> jax.Array:
    """SSIM per image [N] (pytorch-msssim ``ssim(..., size_average=False, nonnegative_ssim=...)``)."""
    per_channel, _ = ssim_per_channel(x, y, data_range)
    if nonnegative:
        per_channel = jax.nn.relu(per_channel)
    return jnp.mean(per_channel, axis=-1)
