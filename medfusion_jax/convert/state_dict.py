"""Map between PyTorch Medfusion state_dicts and the parameters of our Flax NNX modules.

Our modules are named after the reference's attributes, so a parameter's dotted path equals its PyTorch
key once the leaf is renamed (``kernel``/``scale``/``embedding`` -> ``weight``) and the few
``nn.Sequential`` indices of the reference are restored (``_SEQUENTIAL_INDICES``). Layouts differ:
conv OIHW <-> HWIO (3-D: OIDHW <-> DHWIO), linear [out, in] <-> [in, out]. 2-D and 3-D networks have
the same keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from medfusion_jax.models.unet import UNet

# Where the reference wraps a block in nn.Sequential (with attention/activation placeholders that have no
# parameters) our path lacks the index; these rules, applied in order, put it back.
_SEQUENTIAL_INDICES: list[tuple[re.Pattern, str]] = [
    # UnetResBlock.local_embedder = Sequential(Swish, Linear).
    (re.compile(r"\.local_embedder\."), r".local_embedder.1."),
]
_UNET_SEQUENTIAL_INDICES: list[tuple[re.Pattern, str]] = [
    # in_blocks[j] = Sequential(UnetResBlock, Attention) unless it is a BasicDown.
    (re.compile(r"^in_blocks\.(\d+)\.(block_seq|local_embedder)\."), r"in_blocks.\1.0.\2."),
    # out_blocks[j] = Sequential(UnetResBlock, Attention[, BasicUp]).
    (re.compile(r"^out_blocks\.(\d+)\.res\."), r"out_blocks.\1.0."),
    (re.compile(r"^out_blocks\.(\d+)\.up\."), r"out_blocks.\1.2."),
    # middle_block = Sequential(UnetResBlock, Attention, UnetResBlock).
    (re.compile(r"^middle_block\.1\."), r"middle_block.2."),
    # MONAI's UnetOutBlock wraps a Convolution whose conv is `.conv`.
    (re.compile(r"^outc\.conv\."), r"outc.conv.conv."),
    # TimeEmbbeding.time_emb = Sequential(SinusoidalPosEmb, Linear, Swish, Linear).
    (re.compile(r"^time_embedder\.linear_1\."), r"time_embedder.time_emb.1."),
    (re.compile(r"^time_embedder\.linear_2\."), r"time_embedder.time_emb.3."),
]
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


class StateDictMismatch(ValueError):
    """A state_dict does not fit a module: lists every missing, unexpected and mis-shaped key."""

    def __init__(self, missing: list[str], unexpected: list[str], misshaped: list[str], source: str = "state_dict"):
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped
        lines = [f"{source} does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if misshaped:
            lines.append(f"  mis-shaped keys ({len(misshaped)}): " + "; ".join(misshaped))
        super().__init__("\n".join(lines))


def torch_key(path: tuple, *, unet: bool) -> str:
    """The PyTorch state_dict key of one of our parameter paths (``unet``: the path is inside a UNet)."""
    *parents, leaf = (str(p) for p in path)
    dotted = ".".join(parents) + "."
    for pattern, repl in _SEQUENTIAL_INDICES + (_UNET_SEQUENTIAL_INDICES if unet else []):
        dotted = pattern.sub(repl, dotted)
    return dotted + _LEAF_NAMES[leaf]


def _to_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim in (4, 5):
        n = value.ndim - 2  # (D)HWIO -> OI(D)HW
        return value.transpose(n + 1, n, *range(n))
    if leaf == "kernel" and value.ndim == 2:
        return value.T  # [in, out] -> [out, in]
    return value


def _from_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim in (4, 5):
        n = value.ndim - 2  # OI(D)HW -> (D)HWIO
        return value.transpose(*range(2, n + 2), 1, 0)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def _torch_shape(path: tuple, var: nnx.Variable) -> tuple[int, ...]:
    return tuple(_to_torch_layout(str(path[-1]), np.empty(var.shape, np.uint8)).shape)


def _param_paths(module: nnx.Module) -> dict[str, tuple[tuple, nnx.Variable]]:
    unet = isinstance(module, UNet)
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        out[torch_key(path, unet=unet)] = (path, var)
    return out


def torch_keys(module: nnx.Module) -> dict[str, tuple[int, ...]]:
    """{PyTorch key: PyTorch-layout shape} of every parameter of ``module``."""
    return {key: _torch_shape(path, var) for key, (path, var) in _param_paths(module).items()}


def to_state_dict(module: nnx.Module) -> dict[str, np.ndarray]:
    """The module's parameters as a PyTorch-layout state_dict of numpy arrays."""
    return {
        key: np.ascontiguousarray(_to_torch_layout(str(path[-1]), np.asarray(var.get_value())))
        for key, (path, var) in _param_paths(module).items()
    }


def load_state_dict(module: nnx.Module, state_dict: Mapping[str, np.ndarray], *, source: str = "state_dict") -> None:
    """Copy a PyTorch-layout state_dict into ``module`` in place.

    Strict: raises :class:`StateDictMismatch` naming every missing, unexpected and mis-shaped key, and
    changes nothing in that case.
    """
    params = _param_paths(module)
    missing = sorted(set(params) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(params))
    misshaped = []
    converted = {}
    for key in sorted(set(params) & set(state_dict)):
        path, var = params[key]
        value = np.asarray(state_dict[key])
        expected = _torch_shape(path, var)
        if tuple(value.shape) != expected:
            misshaped.append(f"{key}: expected {expected}, got {tuple(value.shape)}")
            continue
        converted[key] = _from_torch_layout(str(path[-1]), value.astype(np.float32))
    if missing or unexpected or misshaped:
        raise StateDictMismatch(missing, unexpected, misshaped, source)
    for key, value in converted.items():
        params[key][1].set_value(jnp.asarray(value))
