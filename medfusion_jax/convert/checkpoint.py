"""Bring original Medfusion (PyTorch) weights into our modules, without torch.

A checkpoint is a ``torch.save`` file: a bare state_dict (``.pt``/``.pth``) or a PyTorch-Lightning
checkpoint (``.ckpt``: a dict with ``state_dict`` and ``hyper_parameters``). Lightning stores the
constructor arguments of the reference class in ``hyper_parameters``, so a module can be built from
the file alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flax import nnx

from medfusion_jax.convert.reference import build_from_reference
from medfusion_jax.convert.state_dict import load_state_dict
from medfusion_jax.torch_file import TorchFileError, load_torch_file

# Sub-modules of the reference's Lightning classes that are not part of the network: the frozen LPIPS
# network of the autoencoder's loss.
DEFAULT_IGNORED_PREFIXES = ("perceiver.",)


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state_dict, hyper_parameters) of a PyTorch checkpoint; hyper_parameters is {} for a bare state_dict."""
    obj = load_torch_file(path)
    if not isinstance(obj, Mapping):
        raise TorchFileError(f"{path}: expected a state_dict or a Lightning checkpoint (a dict), "
                             f"found {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        state, hparams = obj["state_dict"], dict(obj.get("hyper_parameters") or {})
    else:
        state, hparams = obj, {}
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    if not arrays:
        raise TorchFileError(f"{path}: the checkpoint holds no tensors")
    return arrays, hparams


def select_weights(
    state_dict: Mapping[str, np.ndarray], prefix: str = "", ignore: Iterable[str] = DEFAULT_IGNORED_PREFIXES
) -> dict[str, np.ndarray]:
    """Keys under ``prefix`` (stripped), minus those starting with an ignored prefix."""
    ignore = tuple(ignore)
    return {k[len(prefix):]: v for k, v in state_dict.items()
            if k.startswith(prefix) and not k[len(prefix):].startswith(ignore)}


def load_reference_weights(module: nnx.Module, path: str | os.PathLike[str], prefix: str = "",
                           ignore: Iterable[str] = DEFAULT_IGNORED_PREFIXES) -> None:
    """Load the weights of a PyTorch checkpoint into ``module`` (strict: every key must match)."""
    state, _ = read_checkpoint(path)
    load_state_dict(module, select_weights(state, prefix, ignore), source=str(path))


def module_from_checkpoint(path: str | os.PathLike[str], class_name: str, prefix: str = "",
                           hyper_parameters: Mapping[str, Any] | None = None,
                           ignore: Iterable[str] = DEFAULT_IGNORED_PREFIXES) -> nnx.Module:
    """Build our ``class_name`` ('VAE', 'VAEGAN', 'Discriminator', 'UNet') from a checkpoint and load it.

    The constructor arguments come from ``hyper_parameters`` when given, else from the checkpoint's own.
    """
    state, stored = read_checkpoint(path)
    kwargs = dict(hyper_parameters if hyper_parameters is not None else stored)
    module = build_from_reference(class_name, kwargs)
    load_state_dict(module, select_weights(state, prefix, ignore), source=str(path))
    return module
