"""The autoencoder's reconstruction loss (``VAE.rec_loss`` + ``_step``, spec section 4.3).

Per output o: R_o = mean over images of [ sum_chw l(p - y) + C*H*W * (w_p * LPIPS + 1 - SSIM) ]: the
per-image perceptual and SSIM terms are broadcast over every pixel before the sum, as the reference
does. Total: sum over outputs (equal weights) + kl_weight * KL. Volumes (N x D x H x W x C) take the
same formulas with C*D*H*W elements and the 3-D SSIM of pytorch-msssim.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from medfusion_jax.layers import nearest_exact_resize
from medfusion_jax.losses.ssim import ssim

PerceptualFn = Callable[[jax.Array, jax.Array], jax.Array]
PIXEL_LOSSES = ("l1", "mse")


def to_unit_range(x: jax.Array) -> jax.Array:
    return (x + 1.0) / 2.0


def ssim_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """1 - SSIM per image; the prediction is clamped to [0, 1], the target is not (as the reference)."""
    return 1.0 - ssim(jnp.clip(to_unit_range(pred), 0.0, 1.0), to_unit_range(target))


def reconstruction_loss(
    pred: jax.Array,
    target: jax.Array,
    *,
    pixel_loss: str = "l1",
    perceptual_fn: PerceptualFn | None = None,
    perceptual_weight: float = 1.0,
) -> jax.Array:
    """R_o for one output: pixel term summed per image plus C*H*W * (w_p LPIPS + 1 - SSIM), batch mean."""
    if pixel_loss not in PIXEL_LOSSES:
        raise ValueError(f"pixel_loss must be one of {PIXEL_LOSSES}, got {pixel_loss!r}")
    pred = pred.astype(jnp.float32)
    diff = pred - target
    pixel = jnp.abs(diff) if pixel_loss == "l1" else jnp.square(diff)
    per_image = ssim_loss(pred, target)
    if perceptual_fn is not None:
        per_image = per_image + perceptual_weight * perceptual_fn(pred, target)
    elements = math.prod(pred.shape[1:])  # C*H*W (C*D*H*W for volumes)
    return jnp.mean(jnp.sum(pixel, axis=tuple(range(1, pred.ndim))) + elements * per_image)


def head_target_nearest_exact(x: jax.Array, like: jax.Array) -> jax.Array:
    """The VAE stage's deep-supervision target: nearest-exact resize (picks odd pixels when halving)."""
    return nearest_exact_resize(x, like.shape[1:-1])


def head_target_area(x: jax.Array, like: jax.Array) -> jax.Array:
    """The VAEGAN stage's deep-supervision target: area downsampling (mean over each f x f (x f) block)."""
    spatial = x.shape[1:-1]
    factors = [n // m for n, m in zip(spatial, like.shape[1:-1], strict=True)]
    blocks = [d for n, f in zip(spatial, factors, strict=True) for d in (n // f, f)]
    return x.reshape(x.shape[0], *blocks, x.shape[-1]).mean(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def vae_loss(
    out: jax.Array,
    heads: Sequence[jax.Array],
    kl: jax.Array,
    x: jax.Array,
    *,
    pixel_loss: str = "l1",
    perceptual_fn: PerceptualFn | None = None,
    perceptual_weight: float = 1.0,
    kl_weight: float = 1e-6,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The VAE stage's loss: R_0 (full resolution vs x) + sum of R_j (heads vs nearest-exact x) + w_kl KL."""
    kw = dict(pixel_loss=pixel_loss, perceptual_fn=perceptual_fn, perceptual_weight=perceptual_weight)
    rec = reconstruction_loss(out, x, **kw)
    for head in heads:
        rec = rec + reconstruction_loss(head, head_target_nearest_exact(x, head), **kw)
    return rec + kl_weight * kl, dict(rec_loss=rec, kl=kl)
