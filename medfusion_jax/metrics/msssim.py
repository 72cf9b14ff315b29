"""Reconstruction metrics of the paper's autoencoder table: MS-SSIM, SSIM and MSE per image (or volume),
mean +- std.

:func:`ms_ssim` follows TorchMetrics 0.11's ``multiscale_structural_similarity_index_measure`` as
Medfusion's ``scripts/evaluate_latent_embedder.py`` called it (one image per call):

- 11x11 Gaussian window with sigma 1.5, k1 = 0.01, k2 = 0.03, 5 scales with betas
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) and 2x2 average pooling (floor) between scales;
- TorchMetrics reflect-pads by 5, filters, then crops 5 pixels from each border: that is exactly the
  valid (unpadded) filtering done here; the 2-D window is the outer product of a 1-D Gaussian, applied
  here as two 1-D passes (``medfusion_jax.losses.ssim.filtered_moments``: a banded matrix product or
  a shifted sum; XLA's depthwise 2-D convolution was several times slower on a CPU);
- ``data_range=None`` means ``max(range(preds), range(target))``, recomputed at every scale from the
  pooled images — per image here, as the reference computed it one image at a time;
- ``normalize='relu'`` clamps the similarity and contrast terms at 0 at every scale;
- result = prod_{s<4} cs_s^beta_s * sim_4^beta_4.

Images are NHWC floats (the reference used [0, 1]).

Volumes, NDHWC, follow TorchMetrics 0.11's 5-D branch of the same functions: an 11x11x11 Gaussian window
(the outer product of the 1-D Gaussian along D, H and W, applied here as three 1-D passes), reflect
padding then cropping (again valid filtering), the data range over all voxels of a volume, the mean over
all valid positions and channels, and 2x2x2 average pooling (floor) between scales.

Sizes. TorchMetrics' MS-SSIM requires ``side // (scales - 1) ** 2 > 10`` of the height and width; here
every spatial side must pass it (the depth too: the window slides along D as well). For 2 scales the
rule lets through sides (11 to 21) whose coarsest scale is smaller than the window, where TorchMetrics
averages an empty map (NaN): :func:`ms_ssim` refuses those too (the paper's 5 scales never reach it).
Single-scale :func:`ssim` checks no size: an axis shorter than the window is left unfiltered
(pytorch-msssim's rule, from :func:`~medfusion_jax.losses.ssim.filtered_moments`), where TorchMetrics
has no value; SSIM of such small images is not TorchMetrics'.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from medfusion_jax.losses.ssim import filtered_moments

BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_kernel_1d(sigma: float = 1.5) -> np.ndarray:
    """TorchMetrics' 1-D Gaussian, size ``int(3.5 sigma + 0.5) * 2 + 1``, float32, summing to 1."""
    size = int(3.5 * sigma + 0.5) * 2 + 1
    dist = np.arange((1 - size) / 2, (1 + size) / 2, 1, dtype=np.float32)
    g = np.exp(-((dist / np.float32(sigma)) ** 2) / 2)
    return (g / g.sum()).astype(np.float32)


def gaussian_window(sigma: float = 1.5) -> np.ndarray:
    """TorchMetrics' 2-D Gaussian window: the outer product of :func:`gaussian_kernel_1d` with itself."""
    g = gaussian_kernel_1d(sigma)
    return np.outer(g, g).astype(np.float32)


def _data_range(preds: jax.Array, target: jax.Array) -> jax.Array:
    """Per image (or volume): max(range(preds), range(target)), shaped [B, 1, 1, 1] (or [B, 1, 1, 1, 1])."""
    axes = tuple(range(1, preds.ndim))
    r = jnp.maximum(
        jnp.max(preds, axes) - jnp.min(preds, axes), jnp.max(target, axes) - jnp.min(target, axes)
    )
    return r.reshape((-1,) + (1,) * len(axes))


def _ssim_and_cs(preds, target, kernel_1d, data_range, k1, k2):
    """Mean SSIM and mean contrast-sensitivity term per image (or volume) over the valid filter positions
    and the channels."""
    mu_p, mu_t, e_pp, e_tt, e_pt = filtered_moments(preds, target, kernel_1d)  # [B, C, (D',) H', W'] each
    mu_pp, mu_tt, mu_pt = mu_p**2, mu_t**2, mu_p * mu_t
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    upper = 2 * (e_pt - mu_pt) + c2
    lower = (e_pp - mu_pp) + (e_tt - mu_tt) + c2
    ssim_map = ((2 * mu_pt + c1) * upper) / ((mu_pp + mu_tt + c1) * lower)
    cs_map = upper / lower
    axes = tuple(range(1, ssim_map.ndim))
    return jnp.mean(ssim_map, axis=axes), jnp.mean(cs_map, axis=axes)


def _check_pair(preds: jax.Array, target: jax.Array) -> None:
    if preds.shape != target.shape or preds.ndim not in (4, 5):
        raise ValueError("expected two NHWC image batches or NDHWC volume batches of the same shape, "
                         f"got {preds.shape} and {target.shape}")


def ssim(
    preds: jax.Array,
    target: jax.Array,
    *,
    data_range: float | None = None,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> jax.Array:
    """Single-scale SSIM per image [B] of NHWC batches, or per volume of NDHWC batches (TorchMetrics
    semantics; ``data_range=None`` is per image or volume)."""
    preds, target = jnp.asarray(preds, jnp.float32), jnp.asarray(target, jnp.float32)
    _check_pair(preds, target)
    return _ssim(preds, target, data_range, sigma, k1, k2)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _ssim(preds, target, data_range, sigma, k1, k2):
    dr = _data_range(preds, target) if data_range is None else jnp.float32(data_range)
    return _ssim_and_cs(preds, target, gaussian_kernel_1d(sigma), dr, k1, k2)[0]


def ms_ssim(
    preds: jax.Array,
    target: jax.Array,
    *,
    data_range: float | None = None,
    betas: tuple[float, ...] = BETAS,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    normalize: str | None = "relu",
) -> jax.Array:
    """Multi-scale SSIM per image [B] of NHWC batches, or per volume of NDHWC batches, as TorchMetrics
    0.11 (see the module docstring; ``ValueError`` where a side is too small for ``len(betas)`` scales).

    ``normalize`` is ``'relu'`` (the paper's setting), ``'simple'`` (``(x + 1) / 2`` of the stacked
    terms) or ``None``.
    """
    if normalize not in ("relu", "simple", None):
        raise ValueError(f"normalize must be 'relu', 'simple' or None, got {normalize!r}")
    preds, target = jnp.asarray(preds, jnp.float32), jnp.asarray(target, jnp.float32)
    _check_pair(preds, target)
    check_msssim_size(preds.shape[1:-1], len(betas), gaussian_kernel_1d(sigma).shape[0])
    return _ms_ssim(preds, target, data_range, tuple(betas), sigma, k1, k2, normalize)


def msssim_size_error(spatial: tuple[int, ...], scales: int = len(BETAS), window: int = 11) -> str | None:
    """Why MS-SSIM of ``scales`` scales cannot be computed on images (``spatial`` = (H, W)) or volumes
    ((D, H, W)) of this size, or None when it can (see the module docstring)."""
    names = ("height", "width") if len(spatial) == 2 else ("depth", "height", "width")
    kind = "image" if len(spatial) == 2 else "volume"
    div = max(1, scales - 1) ** 2
    for side, name in zip(spatial, names, strict=True):
        # TorchMetrics 0.11's size rule (it divides by (scales - 1)^2, not 2^(scales - 1)).
        if side // div <= window - 1:
            return f"for {scales} scales the {kind} {name} must be larger than {(window - 1) * div}, got {side}"
        # The coarsest scale must hold one window (the rule above ensures it for 3 or more scales).
        if side // 2 ** (scales - 1) < window:
            return (f"for {scales} scales the {kind} {name} must be at least {window * 2 ** (scales - 1)} "
                    f"(the coarsest scale must hold the {window}-wide window), got {side}")
    return None


def check_msssim_size(spatial: tuple[int, ...], scales: int = len(BETAS), window: int = 11) -> None:
    """``ValueError`` with :func:`msssim_size_error`'s reason, if any."""
    error = msssim_size_error(tuple(int(s) for s in spatial), scales, window)
    if error is not None:
        raise ValueError(error)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _ms_ssim(preds, target, data_range, betas, sigma, k1, k2, normalize):
    window = gaussian_kernel_1d(sigma)
    spatial = preds.ndim - 2
    pool = (1,) + (2,) * spatial + (1,)  # 2x2 (images) or 2x2x2 (volumes), floor
    terms = []
    for scale in range(len(betas)):
        dr = _data_range(preds, target) if data_range is None else jnp.float32(data_range)
        sim, cs = _ssim_and_cs(preds, target, window, dr, k1, k2)
        if normalize == "relu":
            sim, cs = jax.nn.relu(sim), jax.nn.relu(cs)
        terms.append(sim if scale == len(betas) - 1 else cs)
        preds = jax.lax.reduce_window(preds, 0.0, jax.lax.add, pool, pool, "VALID") / 2**spatial
        target = jax.lax.reduce_window(target, 0.0, jax.lax.add, pool, pool, "VALID") / 2**spatial
    stack = jnp.stack(terms)
    if normalize == "simple":
        stack = (stack + 1) / 2
    return jnp.prod(stack ** jnp.asarray(betas, jnp.float32)[:, None], axis=0)


def mse_per_image(preds: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error of each image (NHWC) or volume (NDHWC) over its pixels or voxels and channels [B]."""
    preds, target = jnp.asarray(preds, jnp.float32), jnp.asarray(target, jnp.float32)
    _check_pair(preds, target)
    return jnp.mean((preds - target) ** 2, axis=tuple(range(1, preds.ndim)))


def mean_std(values) -> tuple[float, float]:
    """Mean and unbiased standard deviation (``torch.std``), as the paper's tables report them."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        raise ValueError("mean_std of no values")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")
