"""Resizing of uint8 images to the Inception input size, as the FID reference implementations do it.

Two resamplers, both NHWC:

- :func:`resize_bilinear_tf1` — TensorFlow 1.x ``resize_bilinear(align_corners=False)``, the
  asymmetric kernel of the 2015 FID graph that torch-fidelity's ``inception-v3-compat`` (and so
  TorchMetrics < 1.8, the paper's library) reproduces: output pixel ``i`` samples the input at
  ``i * in / out`` (no half-pixel offset), clamped at the last row/column. This is *not*
  ``jax.image.resize``.
- :func:`resize_bilinear_antialias` — the half-pixel, antialiased bilinear resize that
  TorchMetrics >= 1.8 uses by default (``antialias=True``). It gives different features (FID moves
  by about 1 on small sets), so it only serves comparisons with those versions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _tf1_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Low index, high index and float32 fraction of each output position along one axis.

    Computed in float32 exactly as torch-fidelity's bit-exact ("slow") path does: the scale
    ``in / out`` is rounded to float32 and multiplied by the float32 output index, then truncated.
    """
    scale = np.float32(in_size / out_size)
    pos = np.arange(out_size, dtype=np.float32) * scale
    lo = pos.astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = pos - lo.astype(np.float32)
    return lo, hi, frac


def resize_bilinear_tf1(images: jax.Array, size: tuple[int, int] = (299, 299)) -> jax.Array:
    """TF1 ``resize_bilinear(align_corners=False)`` of NHWC images; returns float32 NHWC.

    Interpolates along the width first, then the height, with ``a + (b - a) * t`` (the operation
    order of torch-fidelity's bit-exact path, which matches TensorFlow 1.x to float32 rounding).
    """
    if images.ndim != 4:
        raise ValueError(f"expected NHWC images, got shape {images.shape}")
    x = images.astype(jnp.float32)
    in_h, in_w = x.shape[1], x.shape[2]
    out_h, out_w = size
    y_lo, y_hi, y_t = _tf1_axis(in_h, out_h)
    x_lo, x_hi, x_t = _tf1_axis(in_w, out_w)
    rows_lo = x[:, y_lo]
    rows_hi = x[:, y_hi]
    t_x = jnp.asarray(x_t)[None, None, :, None]
    top = rows_lo[:, :, x_lo] + (rows_lo[:, :, x_hi] - rows_lo[:, :, x_lo]) * t_x
    bottom = rows_hi[:, :, x_lo] + (rows_hi[:, :, x_hi] - rows_hi[:, :, x_lo]) * t_x
    t_y = jnp.asarray(y_t)[None, :, None, None]
    return top + (bottom - top) * t_y


def resize_bilinear_antialias(images: jax.Array, size: tuple[int, int] = (299, 299)) -> jax.Array:
    """Half-pixel bilinear resize with antialiasing when downsampling; returns float32 NHWC.

    The triangle filter widened by the downsampling factor and renormalised at the borders, as
    ``torch.nn.functional.interpolate(mode='bilinear', align_corners=False, antialias=True)``.
    """
    if images.ndim != 4:
        raise ValueError(f"expected NHWC images, got shape {images.shape}")
    n, _, _, c = images.shape
    return jax.image.resize(
        images.astype(jnp.float32), (n, size[0], size[1], c), method="bilinear", antialias=True
    )
