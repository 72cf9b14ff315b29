"""Building blocks of Medfusion's networks (spec section 3), in Flax NNX, channels-last.

One code path for images and volumes: every layer takes ``spatial_dims`` (2: N x H x W x C, 3:
N x D x H x W x C), as the original builds every network through MONAI with ``spatial_dims``. The
kernels are HWIO / DHWIO; GroupNorm, the residual blocks and the embeddings are the same in both.

Every layer reproduces the PyTorch/MONAI original exactly:

- convolutions pad symmetrically with p = (k - s + 1) // 2 like MONAI's padding rule (Flax's 'SAME'
  pads (0, 1) for a 3x3/stride-2 conv on even inputs and would give different outputs);
- GroupNorm uses eps 1e-5 and the two-pass variance, like ``torch.nn.GroupNorm``;
- weights start from PyTorch's defaults (kaiming-uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)) for conv and
  linear weights *and* biases, GroupNorm (1, 0), Embedding N(0, 1)), and the layers the reference
  zero-initialises start at zero, so a fresh model behaves like a fresh original.

Parameter names are chosen so that the dotted path of a parameter in our modules equals the key of the
PyTorch state_dict up to the leaf name (``kernel``/``scale``/``embedding`` -> ``weight``); the few
places where PyTorch uses ``nn.Sequential`` indices are mapped in :mod:`medfusion_jax.convert`.

Volumes on a CPU: XLA:CPU's own 3-D convolution is slow (on 2 cores, a 16->16-channel 3x3x3 convolution of
4 x 32^3 voxels runs at ~25 GFLOP/s, its backward through a stride-2 convolution ~25x slower than
the 2-D path). :func:`conv` computes a 3-D convolution there as one 2-D convolution: the depth taps
are stacked along the input channels, so XLA's fast 2-D kernels do the work (the same sums in
another rounding order; ``bench/conv3d.py`` measures both). ``MEDFUSION_JAX_CONV3D=native`` (or
:data:`CONV3D` = ``"native"``) keeps XLA's 3-D convolution; ``"depth-taps"`` uses the 2-D form on every
backend; the default ``"auto"`` uses it on a CPU only (GPUs and TPUs have fast 3-D convolutions).

Compute dtype: every layer takes ``dtype`` (the dtype of its computation, e.g. ``jnp.bfloat16``);
parameters stay float32. GroupNorm statistics are always computed in float32.
"""

from __future__ import annotations

import math
import os
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Dtype = Any


def same_padding(kernel_size: int, stride: int) -> int:
    """MONAI's ``get_padding``: the symmetric padding every conv of Medfusion uses."""
    return (kernel_size - stride + 1) // 2


def _draw_bucketed(draw, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``draw(key, shape)`` computed as ``draw(key, (N,))[:n].reshape(shape)`` with N = n rounded up to a
    power of two: the same numbers, with far fewer compilations.

    Built eagerly, every parameter shape would compile its own random-number program (~0.3 s each on
    a CPU with Threefry keys: a small 3-D autoencoder took 12 s to construct). JAX's counter-based
    generators make element i of a draw depend only on the key and i (Threefry when
    ``jax_threefry_partitionable`` is on, the default since JAX 0.5; the RBG keys training uses), so a
    longer draw's prefix is the shorter draw, bit for bit; the tests check that for both key kinds.
    Other keys are drawn directly.
    """
    n = math.prod(shape)
    impl = str(jax.random.key_impl(key)) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else ""
    prefix_stable = impl in ("rbg", "unsafe_rbg") or (impl == "threefry2x32" and jax.config.jax_threefry_partitionable)
    if not prefix_stable or n == 0:
        return draw(key, shape)
    return draw(key, (1 << (n - 1).bit_length(),))[:n].reshape(shape)


def _uniform(key: jax.Array, shape: tuple[int, ...], bound: float) -> jax.Array:
    return _draw_bucketed(lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound, bound), key, shape)


def spatial_layout(spatial_dims: int) -> str:
    """'HW' or 'DHW': the axis letters of XLA's dimension numbers for 2 or 3 spatial dimensions."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims}")
    return "DHW"[3 - spatial_dims:]


def per_channel(v: jax.Array, spatial_dims: int) -> jax.Array:
    """[B, C] -> [B, 1, ..., 1, C], broadcastable over a channels-last batch with ``spatial_dims`` axes."""
    return v.reshape(v.shape[0], *(1,) * spatial_dims, v.shape[-1])


def nearest_exact_resize(x: jax.Array, size: tuple[int, ...]) -> jax.Array:
    """``F.interpolate(mode='nearest-exact')`` on channels-last ``x`` to the spatial ``size`` (2 or 3 axes):
    output index i of an axis reads input floor((i + 0.5) * in / out).

    An exact 2x upsampling duplicates each pixel; an exact halving picks the odd rows and columns
    (and slices, in 3-D).
    """
    size = tuple(int(n) for n in size)
    if len(size) != x.ndim - 2:
        raise ValueError(f"nearest_exact_resize: {len(size)} sizes for {x.ndim - 2} spatial axes")
    for axis, out in enumerate(size, start=1):
        n = x.shape[axis]
        if out % n == 0:
            # Integer upsampling: a broadcast is cheaper than a gather and gives the same result.
            x = jnp.repeat(x, out // n, axis=axis)
        else:
            index = np.minimum(np.floor((np.arange(out) + 0.5) * n / out).astype(np.int32), n - 1)
            x = jnp.take(x, index, axis=axis)
    return x


#: How a 3-D convolution is computed: "auto" (the 2-D depth-tap form on a CPU, XLA's 3-D convolution
#: elsewhere), "native" (always XLA's) or "depth-taps" (always the 2-D form); read at trace time.
CONV3D = os.environ.get("MEDFUSION_JAX_CONV3D", "auto")
CONV3D_CHOICES = ("auto", "native", "depth-taps")


def _use_depth_taps() -> bool:
    if CONV3D not in CONV3D_CHOICES:
        raise ValueError(f"MEDFUSION_JAX_CONV3D must be one of {', '.join(CONV3D_CHOICES)}, got {CONV3D!r}")
    return CONV3D == "depth-taps" or (CONV3D == "auto" and jax.default_backend() == "cpu")


def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Cross-correlation of channels-last ``x`` with a (D)HWIO ``kernel``, the same ``stride`` and
    symmetric zero ``padding`` on every spatial axis (``torch.nn.Conv2d/3d`` without bias).

    In 3-D, see the module docstring (:data:`CONV3D`): output depth plane d sums the kernel's depth tap
    i applied to input plane ``stride * d + i`` (padded); the kd planes are concatenated along the
    channels and the kernel's taps along its input axis, so that one 2-D convolution over the
    ``batch x output depth`` planes computes the sum.
    """
    nd = x.ndim - 2
    layout = spatial_layout(nd)
    if nd != 3 or not _use_depth_taps():
        return jax.lax.conv_general_dilated(x, kernel, (stride,) * nd, ((padding, padding),) * nd,
                                            dimension_numbers=(f"N{layout}C", f"{layout}IO", f"N{layout}C"))
    batch, depth = x.shape[:2]
    kd, kh, kw, ci, co = kernel.shape
    out_depth = (depth + 2 * padding - kd) // stride + 1
    padded = jnp.pad(x, ((0, 0), (padding, padding), (0, 0), (0, 0), (0, 0)))
    planes = jnp.concatenate(
        [jax.lax.slice_in_dim(padded, i, i + stride * (out_depth - 1) + 1, stride, axis=1) for i in range(kd)],
        axis=-1)  # [B, D', H, W, kd * Ci]: tap i's planes in channel block i
    planes = planes.reshape((batch * out_depth,) + planes.shape[2:])
    taps = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * ci, co)
    out = jax.lax.conv_general_dilated(planes, taps, (stride, stride), ((padding, padding),) * 2,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out.reshape((batch, out_depth) + out.shape[1:])


class Conv(nnx.Module):
    """Convolution over 2 or 3 spatial axes, channels-last input, (D)HWIO kernel, symmetric padding
    (k - s + 1) // 2 on every axis, with bias (MONAI's ``Convolution`` conv)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        spatial_dims: int = 2,
        zero_init: bool = False,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.layout = spatial_layout(spatial_dims)
        shape = (kernel_size,) * spatial_dims + (in_channels, out_channels)
        if zero_init:
            kernel = jnp.zeros(shape, jnp.float32)
            bias = jnp.zeros((out_channels,), jnp.float32)
        else:
            bound = 1.0 / math.sqrt(in_channels * kernel_size**spatial_dims)
            kernel = _uniform(rngs.params(), shape, bound)
            bias = _uniform(rngs.params(), (out_channels,), bound)
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(bias)
        self.stride = stride
        self.padding = same_padding(kernel_size, stride)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.with_kernel(x, self.kernel[...])

    def with_kernel(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        """This convolution with ``kernel`` in place of its own (to differentiate with respect to it)."""
        return self.without_bias(x, kernel) + self.bias[...].astype(self.dtype)

    def without_bias(self, x: jax.Array, kernel: jax.Array | None = None) -> jax.Array:
        """The convolution alone; the caller adds ``self.bias`` (see :func:`group_norm_silu`)."""
        return conv(x.astype(self.dtype), (self.kernel[...] if kernel is None else kernel).astype(self.dtype),
                    self.stride, self.padding)


class Linear(nnx.Module):
    """``torch.nn.Linear`` with its default initialisation; kernel stored [in, out]."""

    def __init__(self, in_features: int, out_features: int, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(in_features)
        self.kernel = nnx.Param(_uniform(rngs.params(), (in_features, out_features), bound))
        self.bias = nnx.Param(_uniform(rngs.params(), (out_features,), bound))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return x.astype(self.dtype) @ self.kernel[...].astype(self.dtype) + self.bias[...].astype(self.dtype)


class Embedding(nnx.Module):
    """``torch.nn.Embedding``: a lookup table initialised N(0, 1)."""

    def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs):
        self.embedding = nnx.Param(_draw_bucketed(lambda k, s: jax.random.normal(k, s, jnp.float32), rngs.params(),
                                                  (num_embeddings, features)))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0)


class GroupNorm(nnx.Module):
    """``torch.nn.GroupNorm(groups, C, eps=1e-5, affine=True)`` channels-last (any number of spatial
    axes); contiguous channel groups."""

    def __init__(self, num_channels: int, num_groups: int, *, eps: float = 1e-5, dtype: Dtype = jnp.float32):
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels cannot be split into {num_groups} groups")
        self.scale = nnx.Param(jnp.ones((num_channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_channels,), jnp.float32))
        self.num_groups = num_groups
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        zero_bias = jnp.zeros((x.shape[-1],), jnp.float32)
        z, _ = _group_norm_affine(x, zero_bias, self.scale[...], self.bias[...], self.num_groups, self.eps)
        return z.astype(self.dtype)


def _spatial_sums(x: jax.Array) -> jax.Array:
    """Sums over the spatial axes of a channels-last array, in float32: [B, C].

    On the CPU as a batched matrix-vector product: XLA:CPU reduces over non-minor dimensions an
    order of magnitude more slowly than its matrix kernels run (and a reduction it can fuse into
    would recompute the whole GroupNorm backward inside that slow loop). Elsewhere a plain sum,
    which XLA fuses with the producer.
    """
    b, c = x.shape[0], x.shape[-1]
    p = math.prod(x.shape[1:-1])

    def as_product(x):
        return jnp.einsum("bp,bpc->bc", jnp.ones((b, p), jnp.float32), x.reshape(b, p, c).astype(jnp.float32))

    def as_reduction(x):
        return jnp.sum(x.astype(jnp.float32), axis=tuple(range(1, x.ndim - 1)))

    return jax.lax.platform_dependent(x, cpu=as_product, default=as_reduction)


def _group_means(sums: jax.Array, num_groups: int, count: int) -> jax.Array:
    """Per-(image, channel) sums [B, C] -> the mean of each channel's group, per channel [B, C]."""
    b, c = sums.shape
    means = sums.reshape(b, num_groups, c // num_groups).sum(-1) / count
    return jnp.repeat(means, c // num_groups, axis=1)


def _group_norm_affine(y, bias, scale, beta, num_groups, eps):
    """Float32 ``GroupNorm(y + bias) * scale + beta`` and what a backward pass needs.

    The normalisation is kept as a per-(image, channel) affine map of ``y``,
    xhat = y * norm_mul + norm_add, so that every full-size pass is one multiply-add per element.
    Returns (z, (norm_mul, norm_add, y_sums)).
    """
    nd, c = y.ndim - 2, y.shape[-1]
    pixels = math.prod(y.shape[1:-1])
    count = pixels * (c // num_groups)
    y = y.astype(jnp.float32)
    y_sums = _spatial_sums(y)                                                  # [B, C]
    shift = bias - _group_means(y_sums + pixels * bias, num_groups, count)     # x - mean = y + shift
    # Two-pass variance like PyTorch: E[(x - mean)^2], not E[x^2] - E[x]^2.
    var = _group_means(_spatial_sums(jnp.square(y + per_channel(shift, nd))), num_groups, count)
    norm_mul = jax.lax.rsqrt(var + eps)                                        # [B, C]
    norm_add = shift * norm_mul
    z = y * per_channel(norm_mul * scale, nd) + per_channel(norm_add * scale + beta, nd)
    return z, (norm_mul, norm_add, y_sums)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def group_norm_silu(y: jax.Array, bias: jax.Array, scale: jax.Array, beta: jax.Array,
                    num_groups: int, eps: float, dtype: Dtype) -> jax.Array:
    """``silu(GroupNorm(y + bias))``: a convolution's bias, GroupNorm (scale, beta) and Swish in one op.

    The same values as ``conv + bias -> GroupNorm -> silu``, with a hand-written backward pass: it
    needs only per-(image, channel) sums over the spatial axes of two products, and gets the bias gradient from
    them and the forward's channel sums instead of reducing the full input gradient again. XLA's
    own derivative recomputes the normalisation inside several reductions to per-channel vectors,
    which XLA:CPU runs slowly (~40% of a 32x32x64 conv-GroupNorm-Swish block's training step).
    """
    return jax.nn.silu(_group_norm_affine(y, bias, scale, beta, num_groups, eps)[0]).astype(dtype)


def _group_norm_silu_fwd(y, bias, scale, beta, num_groups, eps, dtype):
    z, stats = _group_norm_affine(y, bias, scale, beta, num_groups, eps)
    return jax.nn.silu(z).astype(dtype), (y, bias, scale, beta, stats)


def _group_norm_silu_bwd(num_groups, eps, dtype, residuals, grad_out):
    y, bias, scale, beta, (norm_mul, norm_add, y_sums) = residuals
    pixels = math.prod(y.shape[1:-1])
    count = pixels * (y.shape[-1] // num_groups)

    def full(v):  # [B, C] -> broadcastable over [B, (D,) H, W, C]
        return per_channel(v, y.ndim - 2)

    y32 = y.astype(jnp.float32)
    xhat = y32 * full(norm_mul) + full(norm_add)
    z = xhat * scale + beta
    sig = jax.nn.sigmoid(z)
    grad_z = grad_out.astype(jnp.float32) * (sig * (1 + z * (1 - sig)))  # through the Swish
    # The barrier keeps these [B, C] sums as they are: XLA would otherwise fold the later sums over B
    # into them and reduce the full-size products to [C] directly, a second, slow pass on XLA:CPU.
    sum_grad, sum_grad_xhat = jax.lax.optimization_barrier(
        (_spatial_sums(grad_z), _spatial_sums(grad_z * xhat)))             # [B, C] each
    # grad_x = rstd * (d_xhat - mean(d_xhat) - xhat * mean(d_xhat * xhat)) with d_xhat = grad_z * scale
    # and group means, written as grad_z * coef_grad + xhat * coef_xhat + constant:
    coef_grad = norm_mul * scale                                           # rstd * scale
    coef_xhat = -norm_mul * _group_means(sum_grad_xhat * scale, num_groups, count)
    constant = -norm_mul * _group_means(sum_grad * scale, num_groups, count)
    grad_x = grad_z * full(coef_grad) + y32 * full(norm_mul * coef_xhat) + full(norm_add * coef_xhat + constant)
    # The bias gradient sums grad_x over B and space; the spatial sums of xhat follow from the forward's.
    sum_xhat = y_sums * norm_mul + pixels * norm_add
    grad_bias = jnp.sum(coef_grad * sum_grad + coef_xhat * sum_xhat + constant * pixels, axis=0)
    return (grad_x.astype(y.dtype), grad_bias.astype(bias.dtype),
            jnp.sum(sum_grad_xhat, axis=0).astype(scale.dtype), jnp.sum(sum_grad, axis=0).astype(beta.dtype))


group_norm_silu.defvjp(_group_norm_silu_fwd, _group_norm_silu_bwd)


class BasicBlock(nnx.Module):
    """conv k/s/p -> [GroupNorm] -> [Swish]; Dropout(p=0) of the reference is a no-op and omitted."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        norm_groups: int | None = None,
        act: bool = False,
        zero_conv: bool = False,
        spatial_dims: int = 2,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.conv = Conv(in_channels, out_channels, kernel_size, stride, spatial_dims=spatial_dims, zero_init=zero_conv,
                         dtype=dtype, rngs=rngs)
        self.norm = GroupNorm(out_channels, norm_groups, dtype=dtype) if norm_groups else None
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.norm is not None and self.act:
            return group_norm_silu(self.conv.without_bias(x), self.conv.bias[...], self.norm.scale[...],
                                   self.norm.bias[...], self.norm.num_groups, self.norm.eps, self.norm.dtype)
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act:
            x = jax.nn.silu(x)
        return x


class BasicResBlock(nnx.Module):
    """BasicBlock(x) + R(x); R is a 1x1 conv (stride s) when the channel count changes, else identity.

    The residual is added after the activation and nothing follows the sum, as in the reference.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        norm_groups: int,
        zero_conv: bool = False,
        spatial_dims: int = 2,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.basic_block = BasicBlock(
            in_channels, out_channels, kernel_size, stride,
            norm_groups=norm_groups, act=True, zero_conv=zero_conv, spatial_dims=spatial_dims, dtype=dtype, rngs=rngs,
        )
        self.conv_res = (
            Conv(in_channels, out_channels, 1, stride, spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
            if in_channels != out_channels else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x if self.conv_res is None else self.conv_res(x)
        return self.basic_block(x) + residual


class UnetResBlock(nnx.Module):
    """Two BasicResBlocks (in->out, out->out); the second conv starts at zero.

    With an embedding e, Linear(Swish(e)) is added (broadcast over the spatial axes) after the first
    sub-block only.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        norm_groups: int,
        emb_channels: int | None = None,
        spatial_dims: int = 2,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(norm_groups=norm_groups, spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        self.block_seq = nnx.List([
            BasicResBlock(in_channels, out_channels, kernel_size, stride, **kw),
            BasicResBlock(out_channels, out_channels, kernel_size, 1, zero_conv=True, **kw),
        ])
        self.local_embedder = Linear(emb_channels, out_channels, dtype=dtype, rngs=rngs) if emb_channels else None

    #: Rematerialise this block in the backward pass (:func:`set_remat`): only its input is kept, and its
    #: activations are recomputed when the gradient needs them. Same values; less memory, more compute.
    remat: bool = False

    def __call__(self, x: jax.Array, emb: jax.Array | None = None) -> jax.Array:
        if self.remat:
            return nnx.remat(UnetResBlock._forward)(self, x, emb)
        return self._forward(x, emb)

    def _forward(self, x: jax.Array, emb: jax.Array | None) -> jax.Array:
        h = self.block_seq[0](x)
        if emb is not None and self.local_embedder is not None:
            h = h + per_channel(self.local_embedder(jax.nn.silu(emb)), h.ndim - 2)
        return self.block_seq[1](h)


def set_remat(model: nnx.Module, enabled: bool = True) -> int:
    """Switch activation rematerialisation (``jax.checkpoint``, saving nothing inside a block) on or off
    for every residual block of ``model``; returns how many blocks were set.

    The flag is part of the model's static graph, so set it before splitting the model for a jitted step.
    What it trades: a residual block's activations (two conv/GroupNorm/Swish layers at the block's
    resolution) are not kept for the backward pass but recomputed, about one more forward pass of
    compute for a peak memory that grows with the depth of kept inputs instead of every activation;
    what that saves is measured by ``bench/memory3d.py`` from XLA's memory analysis.
    """
    count = 0
    for _, node in nnx.iter_graph(model):
        if isinstance(node, UnetResBlock):
            node.remat = enabled
            count += 1
    return count


class BasicDown(nnx.Module):
    """Learnable downsampling: a plain strided conv k/s/p (no norm, no activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, *,
                 spatial_dims: int = 2, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.down_op = Conv(in_channels, out_channels, kernel_size, stride, spatial_dims=spatial_dims, dtype=dtype,
                            rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_op(x)


# After a 2x pixel duplication, output row 2i reads duplicated rows 2i-1, 2i, 2i+1 = input rows i-1, i, i,
# and output row 2i+1 reads input rows i, i, i+1: per phase, a 2-tap kernel over input rows (i-1, i) or
# (i, i+1) whose taps sum the 3 original ones: [phase, tap, original tap]. The same holds on every axis.
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)


def upsample2x_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``conv3x3(nearest_2x(x), kernel)`` (zero padding 1, no bias) without making the upsampled input,
    for 2 or 3 spatial axes (kernel HWIO or DHWIO).

    Each of the 2^n output phases (even/odd index on each axis) is a 2x..x2 convolution of the input
    with summed taps: the same linear map with (4/9 in 2-D, 8/27 in 3-D) of the multiplications, and no
    full-resolution input for the backward pass to transpose. The phases are one convolution with
    2^n times the output channels over the padded input; phase (p, q) of output pixel (i, j) is at
    (i + p, j + q).
    """
    nd = x.ndim - 2
    spatial = x.shape[1:-1]
    ci, co = kernel.shape[-2:]
    # [2]*n taps, Ci, [2]*n phases, Co; taps summed in the kernel's dtype, then cast like x.
    # 2-D: "pra,qsb,abio->rsipqo" (phase p/q, tap r/s, original tap a/b).
    phase, tap, orig = "pqt"[:nd], "rsu"[:nd], "abc"[:nd]
    spec = ",".join(f"{phase[i]}{tap[i]}{orig[i]}" for i in range(nd)) + f",{orig}io->{tap}i{phase}o"
    combined = jnp.einsum(spec, *([_PHASE_TAPS] * nd), kernel).reshape((2,) * nd + (ci, 2**nd * co))
    # Padded explicitly: XLA:CPU's weight gradient of a padded 2x2 convolution takes a ~100x slower path.
    padded = jnp.pad(x, ((0, 0),) + ((1, 1),) * nd + ((0, 0),))
    out = conv(padded, combined.astype(x.dtype), 1, 0)
    # out: [B, n1 + 1, ..., 2^n Co]; phase (p1..pn) is the slice starting at (p1..pn), channel block
    # p1..pn read as a binary number.
    phases = []
    for index in np.ndindex(*(2,) * nd):
        k = int(np.ravel_multi_index(index, (2,) * nd))
        starts = (0,) + index + (k * co,)
        phases.append(jax.lax.slice(out, starts, tuple(a + b for a, b in zip(starts, (x.shape[0],) + spatial + (co,),
                                                                                   strict=True))))
    # Phases stacked [B, n1, .., nn, 2, .., 2, Co] -> [B, n1, 2, n2, 2, .., Co] -> [B, 2 n1, 2 n2, .., Co].
    stacked = jnp.stack(phases, axis=-2).reshape(out.shape[:1] + spatial + (2,) * nd + (co,))
    order = [0] + [a for i in range(nd) for a in (1 + i, nd + 1 + i)] + [2 * nd + 1]
    return stacked.transpose(order).reshape((x.shape[0],) + tuple(2 * n for n in spatial) + (co,))


class BasicUp(nnx.Module):
    """Learnable upsampling: nearest-exact resize to (n - 1) * s + k_up - 2 * p(k_up, s), then conv 3/1/1.

    With k_up = s = 2 (every Medfusion config) the resize is an exact 2x pixel duplication, and the
    resize and conv run as :func:`upsample2x_conv3x3` (the same linear map, 4/9 of the multiplications;
    sums differ from the literal resize-then-conv by float rounding, ~1e-7 relative).
    ``phase_convolutions=False`` (or setting the attribute on a built model) runs the literal
    resize and conv of the reference instead.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, *,
                 spatial_dims: int = 2, dtype: Dtype = jnp.float32, phase_convolutions: bool = True,
                 rngs: nnx.Rngs):
        self.kernel_size = kernel_size
        self.stride = stride
        self.up_op = Conv(in_channels, out_channels, 3, 1, spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        self.phase_convolutions = phase_convolutions

    def output_size(self, n: int) -> int:
        return (n - 1) * self.stride + self.kernel_size - 2 * same_padding(self.kernel_size, self.stride)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.phase_convolutions and self.kernel_size == self.stride == 2:
            conv = self.up_op
            return upsample2x_conv3x3(x.astype(conv.dtype), conv.kernel[...]) + conv.bias[...].astype(conv.dtype)
        x = nearest_exact_resize(x, tuple(self.output_size(n) for n in x.shape[1:-1]))
        return self.up_op(x)


def check_attention(use_attention: str) -> None:
    """Only ``'none'`` (an identity without parameters) is used by every Medfusion config."""
    if use_attention != "none":
        raise ValueError(
            f"use_attention={use_attention!r} is not supported: every Medfusion configuration uses 'none' "
            "(spec section 3)"
        )


def check_image(x: jax.Array, channels: int, divisor: int, what: str, spatial_dims: int = 2) -> None:
    """Raise a ValueError that says what was expected when ``x`` is not N x (D x) H x W x channels."""
    layout = "N" + spatial_layout(spatial_dims) + "C"
    kind = "image" if spatial_dims == 2 else "volume"
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"{what}: expected a {spatial_dims + 2}-D {layout} batch ({kind}s), got shape {tuple(x.shape)}")
    if x.shape[-1] != channels:
        raise ValueError(f"{what}: expected {channels} channels ({layout}, last axis), got shape {tuple(x.shape)}")
    spatial = x.shape[1:-1]
    if any(n % divisor for n in spatial):
        raise ValueError(
            f"{what}: every spatial size must be divisible by {divisor} (the total downsampling), "
            f"got {'x'.join(str(n) for n in spatial)}"
        )
