"""SSIM as ``pytorch_msssim.ssim`` computes it in the reference's autoencoder loss (spec section 4.3).

Gaussian window 11, sigma 1.5, applied separably with no padding ("valid"); K = (0.01, 0.03); the SSIM
map is averaged per channel, optionally passed through ReLU (``nonnegative_ssim=True``), then averaged
over channels: one value per image. Inputs are NHWC, or NDHWC volumes: pytorch-msssim filters a 5-D
input along D, H and W with the same 1-D window (an axis shorter than the window is left unfiltered),
and so does :func:`ssim`.

Speed. The five filtered maps (x, y, x*x, y*y, x*y) are stacked and filtered together, one axis at a
time (:func:`separable_filter_valid`), in one of two ways chosen by the axis length:

* up to :data:`BAND_MATMUL_MAX_LEN` pixels: a product with the banded ``[n, n - 10]`` matrix of the
  window. It does n/11 times the arithmetic of the direct sum, but as one matrix product it runs on all
  cores of a CPU and its gradient is another matrix product;
* longer axes: the 11-term sum of shifted slices, with a hand-written gradient (the "full" correlation
  of the padded cotangent with the reversed window). The automatic transpose of the slice sum (11
  full-size pads added up) made the gradient 10-20x slower than the forward pass on a CPU.

Both agree with the plain slice sum (kept as :func:`_ssim_reference` for the tests and
``bench/ssim.py``) to float32 rounding (~1e-7 relative). The hand-written gradient supports reverse
mode only (including a gradient taken inside a differentiated function, as VAEGAN's adaptive weight
does), not forward mode (``jax.jvp``/``jax.jacfwd``) through the long-axis path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

WIN_SIZE, WIN_SIGMA = 11, 1.5
K1, K2 = 0.01, 0.03
#: Axes up to this length are filtered with a banded matrix product, longer ones with a shifted sum.
BAND_MATMUL_MAX_LEN = 160


def gaussian_window(size: int = WIN_SIZE, sigma: float = WIN_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian of pytorch-msssim (centred on size // 2)."""
    coords = np.arange(size, dtype=np.float32) - size // 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


# -- fast separable filtering -------------------------------------------------------------------------


def band_matrix(n: int, window: np.ndarray) -> np.ndarray:
    """[n, n - k + 1] float32 matrix M with (x @ M)[j] = sum_i window[i] * x[j + i] (valid correlation)."""
    k = len(window)
    m = np.zeros((n, n - k + 1), np.float32)
    for j in range(n - k + 1):
        m[j:j + k, j] = window
    return m


def _shifted_sum(x: jax.Array, window: tuple[float, ...]) -> jax.Array:
    """sum_i window[i] * x[..., i : i + n_out] along the last axis (the reference's order of terms)."""
    n_out = x.shape[-1] - len(window) + 1
    return sum(w * jax.lax.slice_in_dim(x, i, i + n_out, axis=-1) for i, w in enumerate(window))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _correlate_valid_last(x: jax.Array, window: tuple[float, ...]) -> jax.Array:
    return _shifted_sum(x, window)


def _correlate_fwd(x, window):
    return _shifted_sum(x, window), None


def _correlate_bwd(window, _, g):
    # The transpose of a valid correlation is the full correlation with the reversed window.
    k = len(window) - 1
    g = jnp.pad(g, [(0, 0)] * (g.ndim - 1) + [(k, k)])
    return (_shifted_sum(g, tuple(reversed(window))),)


_correlate_valid_last.defvjp(_correlate_fwd, _correlate_bwd)


def _filter_last(x: jax.Array, window: np.ndarray) -> jax.Array:
    """Valid correlation of the last axis with ``window``; an axis shorter than the window is left as is."""
    n = x.shape[-1]
    if n < len(window):
        return x
    if n <= BAND_MATMUL_MAX_LEN:
        m = jnp.asarray(band_matrix(n, window), x.dtype)
        return jnp.einsum("...n,nm->...m", x, m, precision=jax.lax.Precision.HIGHEST)
    return _correlate_valid_last(x, tuple(float(w) for w in np.asarray(window, np.float32)))


def _filter_transposed(x_wh: jax.Array, window: np.ndarray) -> jax.Array:
    """``[..., W, H]`` -> filtered along H, then W -> ``[..., H', W']`` (one transpose in between)."""
    x = _filter_last(x_wh, window)  # along H
    return _filter_last(jnp.swapaxes(x, -1, -2), window)  # along W


def separable_filter_valid(x: jax.Array, window: np.ndarray) -> jax.Array:
    """Filter ``[..., H, W]`` with ``window`` along H then W, without padding (pytorch-msssim's skip rule:
    an axis shorter than the window is not filtered). Returns ``[..., H', W']``.

    The image axes go last: the batch, channel and stacked-map axes in front are free.
    """
    return _filter_transposed(jnp.swapaxes(x, -1, -2), window)


def gaussian_filter_valid(x: jax.Array, window: np.ndarray) -> jax.Array:
    """:func:`separable_filter_valid` of an NHWC tensor, returned as NHWC."""
    return jnp.transpose(_filter_transposed(jnp.transpose(x, (0, 3, 2, 1)), window), (0, 2, 3, 1))


def filtered_moments(x: jax.Array, y: jax.Array, window: np.ndarray) -> tuple[jax.Array, ...]:
    """(mu_x, mu_y, E[x^2], E[y^2], E[xy]) under the window, each [N, C, H', W'] (or [N, C, D', H', W']),
    from channels-last float32 inputs."""
    stacked = jnp.stack([x, y, x * x, y * y, x * y])  # [5, N, (D,) H, W, C]
    if x.ndim == 4:
        stacked = jnp.transpose(stacked, (0, 1, 4, 3, 2))  # [5, N, C, W, H]
        return tuple(_filter_transposed(stacked, window))
    # Volumes: each spatial axis in turn (D, H, W, as pytorch-msssim) moved last, filtered, moved back.
    stacked = jnp.moveaxis(stacked, -1, 2)  # [5, N, C, D, H, W]
    for axis in range(3, stacked.ndim):
        stacked = jnp.moveaxis(_filter_last(jnp.moveaxis(stacked, axis, -1), window), -1, axis)
    return tuple(stacked)


def ssim_per_channel(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(SSIM, contrast-structure) per image (or volume) and channel, [N, C] each."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu1, mu2, e11, e22, e12 = filtered_moments(x.astype(jnp.float32), y.astype(jnp.float32), gaussian_window())
    sigma1_sq = e11 - mu1**2
    sigma2_sq = e22 - mu2**2
    sigma12 = e12 - mu1 * mu2
    cs_map = (2 * sigma12 + c2) / (sigma1_sq + sigma2_sq + c2)
    ssim_map = (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * cs_map
    spatial = tuple(range(2, ssim_map.ndim))
    return jnp.mean(ssim_map, axis=spatial), jnp.mean(cs_map, axis=spatial)


def ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0, nonnegative: bool = True) -> jax.Array:
    """SSIM per image [N] (pytorch-msssim ``ssim(..., size_average=False, nonnegative_ssim=...)``)."""
    per_channel, _ = ssim_per_channel(x, y, data_range)
    if nonnegative:
        per_channel = jax.nn.relu(per_channel)
    return jnp.mean(per_channel, axis=-1)


# -- the plain implementation, for tests and bench/ssim.py ---------------------------------------------


def _gaussian_filter_valid_reference(x: jax.Array, window: np.ndarray) -> jax.Array:
    """Separable per-channel filtering without padding along H then W of an NHWC tensor (11-slice sums)."""
    w = jnp.asarray(window)
    for axis in (1, 2):
        if x.shape[axis] < w.shape[0]:
            continue
        n_out = x.shape[axis] - w.shape[0] + 1
        x = sum(w[i] * jax.lax.slice_in_dim(x, i, i + n_out, axis=axis) for i in range(w.shape[0]))
    return x


def _ssim_reference(x: jax.Array, y: jax.Array, data_range: float = 1.0, nonnegative: bool = True) -> jax.Array:
    """The previous, straightforward :func:`ssim` (each map filtered on its own with slice sums)."""
    window = gaussian_window()
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    f = functools.partial(_gaussian_filter_valid_reference, window=window)
    mu1, mu2 = f(x), f(y)
    sigma1_sq = f(x * x) - mu1**2
    sigma2_sq = f(y * y) - mu2**2
    sigma12 = f(x * y) - mu1 * mu2
    cs_map = (2 * sigma12 + c2) / (sigma1_sq + sigma2_sq + c2)
    ssim_map = (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * cs_map
    per_channel = jnp.mean(ssim_map, axis=(1, 2))
    if nonnegative:
        per_channel = jax.nn.relu(per_channel)
    return jnp.mean(per_channel, axis=-1)
