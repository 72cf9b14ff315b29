"""Layers against direct numpy formulas of the PyTorch semantics."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medfusion_jax.layers import (
    BasicBlock,
    BasicUp,
    Conv,
    GroupNorm,
    _draw_bucketed,
    conv,
    group_norm_silu,
    nearest_exact_resize,
    same_padding,
    upsample2x_conv3x3,
)


def numpy_conv_nchw(x, w, b, stride, pad):
    """Direct PyTorch-semantics conv (NCHW, OIHW, symmetric zero padding)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = x.shape
    o, _, k, _ = w.shape
    oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out + b[None, :, None, None]


def test_strided_conv_pads_symmetrically_like_pytorch():
    assert [same_padding(k, s) for k, s in [(3, 1), (3, 2), (1, 1), (1, 2)]] == [1, 1, 0, 0]
    conv = Conv(3, 5, 3, 2, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    ours = conv(jnp.asarray(x.transpose(0, 2, 3, 1)))
    w = np.asarray(conv.kernel[...]).transpose(3, 2, 0, 1)
    ref = numpy_conv_nchw(x, w, np.asarray(conv.bias[...]), 2, 1)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), ref, atol=1e-5)
    # Flax's 'SAME' would pad (0, 1) here and differ: the test above would catch that.


def test_group_norm_matches_torch_formula():
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(2, 4, 4, 16)).astype(np.float32)
    gn = GroupNorm(16, 8)
    gn.scale[...] = jnp.linspace(0.5, 1.5, 16)
    gn.bias[...] = jnp.linspace(-1, 1, 16)
    g = x.reshape(2, 4, 4, 8, 2).astype(np.float64)
    ref = (g - g.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(g.var(axis=(1, 2, 4), keepdims=True) + 1e-5)
    ref = ref.reshape(2, 4, 4, 16) * np.linspace(0.5, 1.5, 16) + np.linspace(-1, 1, 16)
    np.testing.assert_allclose(gn(jnp.asarray(x)), ref, atol=1e-5)


def test_nearest_exact_duplicates_when_upsampling_and_picks_odd_pixels_when_halving():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    up = nearest_exact_resize(x, (8, 8))
    np.testing.assert_array_equal(up[0, ::2, ::2, 0], x[0, :, :, 0])
    np.testing.assert_array_equal(up[0, 1::2, 1::2, 0], x[0, :, :, 0])
    down = nearest_exact_resize(x, (2, 2))
    np.testing.assert_array_equal(down[0, :, :, 0], x[0, 1::2, 1::2, 0])
    # A non-integer ratio uses floor((i + 0.5) * in / out).
    np.testing.assert_array_equal(nearest_exact_resize(jnp.arange(5.0).reshape(1, 5, 1, 1), (3, 1))[0, :, 0, 0],
                                  jnp.array([0.0, 2.0, 4.0]))


def _conv_bias_group_norm_silu(y, bias, scale, beta, groups=8, eps=1e-5):
    """The unfused composition (bias add, GroupNorm as torch's formula, Swish), differentiated by JAX."""
    c = y.shape[-1]
    xg = (y + bias).reshape(*y.shape[:-1], groups, c // groups)
    axes = tuple(range(1, y.ndim - 1)) + (y.ndim,)  # space and the channels within a group
    mean = xg.mean(axis=axes, keepdims=True)
    var = jnp.square(xg - mean).mean(axis=axes, keepdims=True)
    return jax.nn.silu(((xg - mean) / jnp.sqrt(var + eps)).reshape(y.shape) * scale + beta)


def test_fused_group_norm_silu_matches_the_composition_and_its_gradients():
    rng = np.random.default_rng(3)
    for shape in [(2, 6, 5, 16), (3, 4, 4, 32), (2, 3, 4, 5, 16)]:  # images and a volume
        c = shape[-1]
        # A large common offset: a one-pass variance would lose most of its digits here.
        y = jnp.asarray(rng.normal(50.0, 2.0, size=shape).astype(np.float32))
        bias, scale, beta = (jnp.asarray(rng.normal(size=c).astype(np.float32)) for _ in range(3))
        weights = jnp.asarray(rng.normal(size=shape).astype(np.float32))

        def fused(*args, weights=weights):
            return jnp.sum(group_norm_silu(*args, 8, 1e-5, jnp.float32) * weights)

        def plain(*args, weights=weights):
            return jnp.sum(_conv_bias_group_norm_silu(*args) * weights)

        np.testing.assert_allclose(group_norm_silu(y, bias, scale, beta, 8, 1e-5, jnp.float32),
                                   _conv_bias_group_norm_silu(y, bias, scale, beta), atol=2e-5)
        ours = jax.jit(jax.grad(fused, argnums=(0, 1, 2, 3)))(y, bias, scale, beta)
        theirs = jax.grad(plain, argnums=(0, 1, 2, 3))(y, bias, scale, beta)
        for name, a, b in zip(["y", "bias", "scale", "beta"], ours, theirs, strict=True):
            err = float(jnp.abs(a - b).max() / jnp.abs(b).max())
            assert err < 1e-4, (shape, name, err)


def test_fused_group_norm_silu_keeps_dtypes():
    y = jnp.ones((1, 4, 4, 8), jnp.bfloat16) * jnp.arange(8, dtype=jnp.bfloat16)
    params = [jnp.ones(8, jnp.float32), jnp.ones(8, jnp.float32), jnp.zeros(8, jnp.float32)]
    out, vjp = jax.vjp(lambda y, *p: group_norm_silu(y, *p, 4, 1e-5, jnp.bfloat16), y, *params)
    assert out.dtype == jnp.bfloat16
    grads = vjp(jnp.ones_like(out))
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.float32, jnp.float32, jnp.float32]


def test_basic_block_with_norm_and_swish_equals_its_layers_applied_in_turn():
    block = BasicBlock(4, 16, 3, 1, norm_groups=8, act=True, rngs=nnx.Rngs(1))
    block.norm.scale[...] = jnp.linspace(0.5, 1.5, 16)
    block.norm.bias[...] = jnp.linspace(-1, 1, 16)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 4)).astype(np.float32))
    np.testing.assert_allclose(block(x), jax.nn.silu(block.norm(block.conv(x))), atol=1e-5)


def test_upsampling_as_phase_convolutions_equals_resize_then_conv_with_gradients():
    up = BasicUp(6, 5, 2, 2, rngs=nnx.Rngs(0))
    up.up_op.bias[...] = jnp.linspace(-1, 1, 5)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 5, 7, 6)).astype(np.float32))
    assert up.phase_convolutions
    phased = up(x)
    up.phase_convolutions = False
    literal = up(x)
    assert phased.shape == literal.shape == (2, 10, 14, 5)
    np.testing.assert_allclose(phased, literal, atol=1e-5)

    weights = jnp.asarray(np.random.default_rng(5).normal(size=(2, 10, 14, 5)).astype(np.float32))

    def phase_loss(x, kernel):
        return jnp.sum(upsample2x_conv3x3(x, kernel) * weights)

    def literal_loss(x, kernel):
        y = jax.lax.conv_general_dilated(nearest_exact_resize(x, (10, 14)), kernel, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y * weights)

    kernel = up.up_op.kernel[...]
    grads = jax.grad(phase_loss, argnums=(0, 1))(x, kernel), jax.grad(literal_loss, argnums=(0, 1))(x, kernel)
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def numpy_conv3d_ncdhw(x, w, b, stride, pad):
    """Direct PyTorch-semantics 3-D conv (NCDHW, OIDHW, symmetric zero padding)."""
    x = np.pad(x, ((0, 0), (0, 0)) + ((pad, pad),) * 3)
    k = w.shape[-1]
    out_size = [(n - k) // stride + 1 for n in x.shape[2:]]
    out = np.zeros((x.shape[0], w.shape[0], *out_size))
    for i, j, m in np.ndindex(*out_size):
        patch = x[:, :, i * stride:i * stride + k, j * stride:j * stride + k, m * stride:m * stride + k]
        out[:, :, i, j, m] = np.einsum("ncdhw,ocdhw->no", patch, w)
    return out + b[:, None, None, None]


def test_3d_strided_conv_pads_symmetrically_like_pytorch():
    conv = Conv(2, 3, 3, 2, spatial_dims=3, rngs=nnx.Rngs(0))
    assert conv.kernel.shape == (3, 3, 3, 2, 3)
    x = np.random.default_rng(0).normal(size=(2, 2, 6, 4, 8)).astype(np.float32)
    ours = conv(jnp.asarray(np.moveaxis(x, 1, -1)))
    ref = numpy_conv3d_ncdhw(x, np.asarray(conv.kernel[...]).transpose(4, 3, 0, 1, 2), np.asarray(conv.bias[...]), 2, 1)
    np.testing.assert_allclose(np.moveaxis(np.asarray(ours), -1, 1), ref, atol=1e-5)


@pytest.mark.parametrize("kernel_size,stride,padding", [(3, 1, 1), (3, 2, 1), (2, 1, 0), (1, 1, 0), (4, 2, 1)])
def test_3d_conv_as_stacked_depth_taps_equals_xla_3d_conv_with_gradients(monkeypatch, kernel_size, stride, padding):
    """The CPU form of a 3-D convolution (one 2-D convolution over depth taps stacked in the channels)
    against XLA's own 3-D convolution, forward and both gradients, on an odd depth."""
    import medfusion_jax.layers as layers

    rng = np.random.default_rng(kernel_size * 10 + stride)
    x = jnp.asarray(rng.normal(size=(2, 7, 6, 5, 3)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(kernel_size,) * 3 + (3, 4)).astype(np.float32))

    def run(impl):
        monkeypatch.setattr(layers, "CONV3D", impl)
        out = conv(x, kernel, stride, padding)
        weights = jnp.asarray(np.random.default_rng(1).normal(size=out.shape).astype(np.float32))
        grads = jax.grad(lambda a, k: jnp.sum(conv(a, k, stride, padding) * weights), argnums=(0, 1))(x, kernel)
        return out, grads

    (taps, taps_grads), (native, native_grads) = run("depth-taps"), run("native")
    assert taps.shape == native.shape
    np.testing.assert_allclose(taps, native, rtol=1e-5, atol=1e-4)
    for a, b in zip(taps_grads, native_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    monkeypatch.setattr(layers, "CONV3D", "fast")
    with pytest.raises(ValueError, match="MEDFUSION_JAX_CONV3D"):
        conv(x, kernel, stride, padding)


def test_3d_nearest_exact_resize_indexes_every_axis():
    x = jnp.arange(4 * 6 * 5.0).reshape(1, 4, 6, 5, 1)
    out = nearest_exact_resize(x, (2, 3, 10))
    d, h, w = (np.floor((np.arange(n) + 0.5) * m / n).astype(int) for n, m in ((2, 4), (3, 6), (10, 5)))
    np.testing.assert_array_equal(out[0, ..., 0], np.asarray(x)[0, ..., 0][np.ix_(d, h, w)])


def test_3d_upsampling_as_phase_convolutions_equals_resize_then_conv_with_gradients():
    up = BasicUp(3, 4, 2, 2, spatial_dims=3, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, 4, 5, 3)).astype(np.float32))
    phased = up(x)
    up.phase_convolutions = False
    literal = up(x)
    assert phased.shape == literal.shape == (2, 6, 8, 10, 4)
    np.testing.assert_allclose(phased, literal, atol=1e-5)
    weights = jnp.asarray(np.random.default_rng(5).normal(size=(2, 6, 8, 10, 4)).astype(np.float32))

    def loss(phase, x, kernel):
        if phase:
            return jnp.sum(upsample2x_conv3x3(x, kernel) * weights)
        y = jax.lax.conv_general_dilated(nearest_exact_resize(x, (6, 8, 10)), kernel, (1, 1, 1), ((1, 1),) * 3,
                                         dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        return jnp.sum(y * weights)

    kernel = up.up_op.kernel[...]
    grads = [jax.grad(partial(loss, phase), argnums=(0, 1))(x, kernel) for phase in (True, False)]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_bucketed_initial_draws_equal_the_direct_draws_bit_for_bit(impl):
    """Parameters are drawn as a prefix of a power-of-two-long draw (one compilation per length bucket);
    with JAX's counter-based generators that is the same numbers as drawing the parameter's own shape."""
    assert jax.config.jax_threefry_partitionable  # else Threefry keys are drawn directly (and this is moot)
    key = jax.random.key(7, impl=impl)
    for shape in [(3, 3, 8, 16), (7,), (3, 3, 3, 5, 7)]:
        for draw in (lambda k, s: jax.random.uniform(k, s, jnp.float32, -0.2, 0.2),
                     lambda k, s: jax.random.normal(k, s, jnp.float32)):
            np.testing.assert_array_equal(_draw_bucketed(draw, key, shape), draw(key, shape))
