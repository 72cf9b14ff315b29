"""The FID Inception-v3 (TensorFlow graph of 2015-12-05) in Flax NNX, channels-last.

It is torch-fidelity's ``inception-v3-compat``, the extractor behind TorchMetrics' FID:

- uint8 input of any size, resized to 299x299 with the TF1 bilinear kernel
  (:func:`~medfusion_jax.pretrained.resize.resize_bilinear_tf1`), then ``(x - 128) / 128``;
- every convolution is bias-free and followed by TF's scale-free batch norm
  (``(x - mean) / sqrt(var + 1e-3) + beta``) and a ReLU;
- the FID variants of the blocks: average pools in the Inception A, C and E_1 blocks ignore the
  padded zeros (``count_include_pad=False``), and the last block (``Mixed_7c``) pools with a max
  instead of an average;
- outputs: the 2048-d average-pooled features and, when the weights carry the 1008-way ``fc`` layer,
  its logits (with and without bias; the unbiased ones feed torch-fidelity's Inception Score).

Attribute names follow torch-fidelity's modules (``Mixed_5b.branch1x1`` ...), so the canonical
weight names of :mod:`~medfusion_jax.pretrained.inception_weights` are the dotted module paths.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medfusion_jax.pretrained.resize import resize_bilinear_antialias, resize_bilinear_tf1

BN_EPS = 1e-3
FEATURE_DIM = 2048
NUM_LOGITS = 1008
INPUT_SIZE = 299

RESIZERS: dict[str, Callable[[jax.Array, tuple[int, int]], jax.Array]] = {
    "tf1": resize_bilinear_tf1,
    "antialias": resize_bilinear_antialias,
}

_HIGHEST = jax.lax.Precision.HIGHEST


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
    """Bias-free convolution, scale-free batch norm (inference statistics), ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        rngs: nnx.Rngs,
    ):
        kh, kw = _pair(kernel_size)
        self.stride = stride
        self.padding = _pair(padding)
        fan_in = in_channels * kh * kw
        self.kernel = nnx.Param(
            jax.random.normal(rngs.params(), (kh, kw, in_channels, out_channels), jnp.float32)
            * np.sqrt(2.0 / fan_in)
        )
        self.beta = nnx.Param(jnp.zeros((out_channels,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((out_channels,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((out_channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return _conv_bn_relu(x, self.kernel[...], self.var[...], self.mean[...], self.beta[...],
                             self.stride, self.padding)


def _conv_bn_relu(x, kernel, var, mean, beta, stride: int, padding: tuple[int, int]) -> jax.Array:
    ph, pw = padding
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_HIGHEST,
    )
    scale = jax.lax.rsqrt(var + BN_EPS)
    return jax.nn.relu(y * scale + (beta - mean * scale))


def _parallel_1x1(x: jax.Array, *convs: BasicConv2d) -> list[jax.Array]:
    """Several 1x1 convolutions of the same input as one wider convolution (one GEMM instead of many).

    Each output channel is still its own dot product over the input channels, so the result is
    the same as running the convolutions one by one.
    """
    cat = lambda get: jnp.concatenate([get(c) for c in convs], axis=-1)  # noqa: E731
    y = _conv_bn_relu(
        x,
        cat(lambda c: c.kernel[...]),
        cat(lambda c: c.var[...]),
        cat(lambda c: c.mean[...]),
        cat(lambda c: c.beta[...]),
        1,
        (0, 0),
    )
    splits = np.cumsum([c.kernel.shape[-1] for c in convs])[:-1]
    return jnp.split(y, splits, axis=-1)


def _max_pool(x: jax.Array, stride: int, pad: int) -> jax.Array:
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        (1, 3, 3, 1),
        (1, stride, stride, 1),
        ((0, 0), (pad, pad), (pad, pad), (0, 0)),
    )


def _avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average with padding 1 that divides by the number of real pixels (TF's pool)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    h, w = x.shape[1], x.shape[2]
    # The count of real pixels in each window is a constant of the shape, known at trace time.
    ones = np.pad(np.ones((h, w), np.float32), 1)
    count = sum(ones[i : i + h, j : j + w] for i in range(3) for j in range(3))
    return total / jnp.asarray(count)[None, :, :, None]


class InceptionA(nnx.Module):
    def __init__(self, in_channels: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(in_channels, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1, b5, b3 = _parallel_1x1(x, self.branch1x1, self.branch5x5_1, self.branch3x3dbl_1)
        b5 = self.branch5x5_2(b5)
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(b3))
        bp = self.branch_pool(_avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([b3, bd, _max_pool(x, 2, 0)], axis=-1)


class InceptionC(nnx.Module):
    def __init__(self, in_channels: int, channels_7x7: int, *, rngs: nnx.Rngs):
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv2d(in_channels, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1, b7, bd = _parallel_1x1(x, self.branch1x1, self.branch7x7_1, self.branch7x7dbl_1)
        b7 = self.branch7x7_3(self.branch7x7_2(b7))
        bd = self.branch7x7dbl_3(self.branch7x7dbl_2(bd))
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
        bp = self.branch_pool(_avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3, b7 = _parallel_1x1(x, self.branch3x3_1, self.branch7x7x3_1)
        b3 = self.branch3x3_2(b3)
        b7 = self.branch7x7x3_2(b7)
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(b7))
        return jnp.concatenate([b3, b7, _max_pool(x, 2, 0)], axis=-1)


class InceptionE(nnx.Module):
    """``pool='avg'`` is Mixed_7b (padding excluded from the average); ``pool='max'`` is Mixed_7c."""

    def __init__(self, in_channels: int, pool: str, *, rngs: nnx.Rngs):
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv2d(in_channels, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1, b3, bd = _parallel_1x1(x, self.branch1x1, self.branch3x3_1, self.branch3x3dbl_1)
        bd = self.branch3x3dbl_2(bd)
        pooled = _avg_pool_exclude_pad(x) if self.pool == "avg" else _max_pool(x, 1, 1)
        return jnp.concatenate(
            [
                b1,
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(bd),
                self.branch3x3dbl_3b(bd),
                self.branch_pool(pooled),
            ],
            axis=-1,
        )


class Linear(nnx.Module):
    """The 1008-way classifier, stored as PyTorch stores it (``weight`` [out, in], ``bias``)."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        bound = 1.0 / np.sqrt(in_features)
        self.weight = nnx.Param(
            jax.random.uniform(rngs.params(), (out_features, in_features), jnp.float32, -bound, bound)
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))


class InceptionV3(nnx.Module):
    """FID Inception-v3. Call it on uint8 NHWC images (3 channels, any size).

    Returns a dict with ``'pool'`` ([B, 2048] float32) and, when built with ``with_logits=True``,
    ``'logits_unbiased'`` and ``'logits'`` ([B, 1008]).

    ``resize`` picks the resampler to 299x299: ``'tf1'`` (the paper's TorchMetrics; default) or
    ``'antialias'`` (TorchMetrics >= 1.8's default; different numbers).

    A fresh instance has random weights; load real ones with
    :func:`medfusion_jax.pretrained.inception_weights.load_inception`.
    """

    def __init__(self, *, with_logits: bool = False, resize: str = "tf1", rngs: nnx.Rngs | None = None):
        if resize not in RESIZERS:
            raise ValueError(f"resize must be one of {sorted(RESIZERS)}, got {resize!r}")
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.resize = resize
        self.with_logits = with_logits
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
        self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)
        self.fc = Linear(FEATURE_DIM, NUM_LOGITS, rngs=rngs) if with_logits else None

    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [B, H, W, 3], got shape {images.shape}")
        if images.dtype != jnp.uint8:
            raise ValueError(f"expected uint8 images, got dtype {images.dtype}")
        x = RESIZERS[self.resize](images, (INPUT_SIZE, INPUT_SIZE))
        x = (x - 128.0) / 128.0
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = _max_pool(x, 2, 0)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = _max_pool(x, 2, 0)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        pool = jnp.mean(x, axis=(1, 2))
        out = {"pool": pool}
        if self.fc is not None:
            unbiased = jnp.matmul(pool, self.fc.weight[...].T, precision=_HIGHEST)
            out["logits_unbiased"] = unbiased
            out["logits"] = unbiased + self.fc.bias[...]
        return out
