"""The networks of a run, built from their constructor arguments, and the pure-pytree view of them.

Training works on pure pytrees (``nnx.split`` into a static graph definition and a dict of float32
arrays, merged back inside the jitted step). The constructor arguments of every network are stored
in the run directory's ``model.json`` so that :func:`~medfusion_jax.training.checkpointing.load_trained`
can rebuild the modules without the training code's configuration logic.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from medfusion_jax.models import VAE, Discriminator, UNet
from medfusion_jax.training.config import GANConfig, UNetConfig, VAEConfig

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def vae_kwargs(config: VAEConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def discriminator_kwargs(gan: GANConfig, in_channels: int) -> dict[str, Any]:
    depth = len(gan.disc_hid_chs)
    return dict(in_channels=in_channels, hid_chs=tuple(gan.disc_hid_chs), kernel_sizes=(3,) * depth,
                strides=(1,) + (2,) * (depth - 1), norm_groups=gan.disc_norm_groups)


def unet_kwargs(config: UNetConfig, latent_channels: int, num_classes: int | None) -> dict[str, Any]:
    return dict(dataclasses.asdict(config), in_ch=latent_channels, out_ch=latent_channels, num_classes=num_classes)


def _tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
    # JSON turns tuples into lists; the modules want sequences, and hashable ones keep graphdefs hashable.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def build(cls: type, kwargs: dict[str, Any], *, seed: int = 0, dtype: str = "float32") -> nnx.Module:
    """``cls(**kwargs)`` with parameters from ``seed`` and compute dtype ``dtype`` ('float32'/'bfloat16').

    Parameters are drawn with JAX's RBG generator: the layers draw them eagerly, one random kernel
    compiled per parameter shape, and threefry kernels compile ~5x slower (seconds for a small
    network on a CPU). The distributions are the layers' (PyTorch's defaults) either way.
    """
    key = jax.random.key(seed, impl="rbg")
    return cls(**_tuples(kwargs), dtype=COMPUTE_DTYPES[dtype], rngs=nnx.Rngs(key))


def build_abstract(cls: type, kwargs: dict[str, Any], *, dtype: str = "float32") -> nnx.Module:
    """The module with shape-only parameters (nothing allocated), for restoring into."""
    return nnx.eval_shape(lambda: build(cls, kwargs, dtype=dtype))


def split_params(module: nnx.Module) -> tuple[nnx.GraphDef, dict]:
    """(graph definition, pure dict of parameter arrays)."""
    graphdef, state = nnx.split(module)
    return graphdef, nnx.to_pure_dict(state)


def shape_tree(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves for a pytree of arrays (or of shape-only arrays)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


MODULE_CLASSES = {"VAE": VAE, "Discriminator": Discriminator, "UNet": UNet}
