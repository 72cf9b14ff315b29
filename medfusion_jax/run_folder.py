"""The run-folder format: what a training run leaves on disk and how later commands read it back.

Layout of a run directory (written by training and by ``convert medfusion``; read by sampling,
evaluation and conversion)::

    RUN/config.json            the full configuration (:mod:`medfusion_jax.config`)
    RUN/model.json             constructor arguments of every network, class names, frozen networks
    RUN/checkpoints/<step>/    params/, opt_state/, ema/ (if enabled), progress/, data/ (training state)
    RUN/autoencoder/params/    diffusion runs: a copy of the frozen autoencoder's weights

Networks are rebuilt from ``model.json`` alone (:func:`build`, :func:`build_abstract`), without the
training code's configuration logic; training works on their pure-pytree form (:func:`split_params`:
a static graph definition and a dict of float32 arrays, merged back inside the jitted step).
:func:`load_trained` returns a run's trained networks and configuration. The training-state side of
checkpoints (Orbax manager, optimiser, data iterator) is :mod:`medfusion_jax.training.checkpointing`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from medfusion_jax import config as config_lib
from medfusion_jax.config import Config, GANConfig, UNetConfig, VAEConfig
from medfusion_jax.images import write_json_atomic
from medfusion_jax.mesh import make_mesh, replicated
from medfusion_jax.models import VAE, Discriminator, UNet

CONFIG_JSON = "config.json"
CHECKPOINTS = "checkpoints"
MODEL_JSON = "model.json"
AUTOENCODER_COPY = "autoencoder"

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def vae_kwargs(config: VAEConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def discriminator_kwargs(gan: GANConfig, in_channels: int, spatial_dims: int = 2) -> dict[str, Any]:
    depth = len(gan.disc_hid_chs)
    kwargs = dict(in_channels=in_channels, hid_chs=tuple(gan.disc_hid_chs), kernel_sizes=(3,) * depth,
                  strides=(1,) + (2,) * (depth - 1), norm_groups=gan.disc_norm_groups)
    # Written only for volumes, so that model.json of 2-D runs stays as it was.
    return kwargs if spatial_dims == 2 else dict(kwargs, spatial_dims=spatial_dims)


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


# -- files of a run directory ---------------------------------------------------------------------


def write_config(config: Config, run_dir: str | Path) -> Path:
    """``config.json``, written whole or not at all: a resumed job rewrites it while its other processes
    read it, and a process killed mid-write must not leave a run that cannot be resumed."""
    path = Path(run_dir) / CONFIG_JSON
    write_json_atomic(path, config_lib.to_dict(config))
    return path


def read_run_json(path: Path, missing: str) -> dict[str, Any]:
    """One JSON file of a run directory; errors name the file (``missing`` says what its absence means)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {missing}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_config(run_dir: str | Path) -> dict[str, Any]:
    return read_run_json(Path(run_dir) / CONFIG_JSON, "no config.json (is this a training run directory?)")


def write_model_json(run_dir: str | Path, modules: dict[str, dict[str, Any]], class_names: tuple[str, ...],
                     frozen: dict[str, str] | None = None) -> None:
    """Record the networks of a run: ``{name: {"class": "VAE", "kwargs": {...}}}``, the class names, and
    ``frozen``: {name: directory relative to the run} for networks stored outside the checkpoints."""
    payload = dict(modules=modules, class_names=list(class_names), frozen=frozen or {})
    write_json_atomic(Path(run_dir) / MODEL_JSON, payload)


def read_model_json(run_dir: str | Path) -> dict[str, Any]:
    return read_run_json(Path(run_dir) / MODEL_JSON,
                                    "missing (not a training run directory, or one still being set up)")


def save_params(directory: str | Path, params: Any) -> None:
    """Write one pytree of parameters with Orbax (used for the autoencoder copy of diffusion runs)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(directory).absolute(), params, force=True)


def restore_params(directory: str | Path, abstract: Any) -> Any:
    """Read a pytree of parameters written by :func:`save_params` or a training checkpoint.

    Leaves of ``abstract`` without a sharding are restored replicated over every device of this job,
    whatever devices the checkpoint was saved from: a run trained on 4 devices or 2 hosts loads in a
    one-device process (Orbax would otherwise insist on the saved topology), and the restored arrays sit
    on the devices the job's computations use.
    """
    everywhere = replicated(make_mesh())
    target = jax.tree.map(lambda x: x if getattr(x, "sharding", None) is not None
                          else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=everywhere), abstract)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(Path(directory).absolute(), target)


def resolve_checkpoint(path: str | Path) -> tuple[Path, int]:
    """(run directory, step) for a run directory (its latest checkpoint) or a ``RUN/checkpoints/<step>`` path."""
    path = Path(path).expanduser().absolute()
    if (path / CONFIG_JSON).is_file():
        run_dir = path
        steps = sorted(int(p.name) for p in (path / CHECKPOINTS).glob("*") if p.name.isdigit()) \
            if (path / CHECKPOINTS).is_dir() else []
        if not steps:
            raise FileNotFoundError(f"{path}: this run directory has no checkpoint yet")
        return run_dir, steps[-1]
    if path.name.isdigit() and path.parent.name == CHECKPOINTS and (path.parent.parent / CONFIG_JSON).is_file():
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such checkpoint")
        return path.parent.parent, int(path.name)
    raise FileNotFoundError(
        f"{path}: not a training run directory (with config.json) nor a RUN/checkpoints/<step> directory"
    )


def load_trained(
    path: str | Path, *, use_ema: bool = True, dtype: str = "float32"
) -> tuple[dict[str, nnx.Module], config_lib.Config]:
    """The trained networks of a run and its configuration, for sampling and evaluation.

    ``path``: a run directory (its latest checkpoint is used) or ``RUN/checkpoints/<step>``.

    Returns ``(modules, config)``:

    * autoencoder runs: ``{"vae": VAE}``, plus ``"discriminator_0"``, ``"discriminator_1"``, ... for
      VAEGAN runs;
    * diffusion runs: ``{"unet": UNet, "vae": VAE}``; the UNet carries the EMA weights when the run kept
      an EMA and ``use_ema`` is true, else the raw weights; the VAE is the frozen autoencoder the run
      was trained on (a copy stored in the run directory).

    ``config`` is the run's :class:`~medfusion_jax.config.AutoencoderConfig` or
    :class:`~medfusion_jax.config.DiffusionConfig` (e.g. ``config.data.dataset``,
    ``config.schedule`` for the noise schedule, ``config.data.image_size``). ``dtype`` is the compute
    dtype of the returned modules. Raises FileNotFoundError naming the path when it is not a run or
    checkpoint.
    """
    run_dir, step = resolve_checkpoint(path)
    config = config_lib.from_dict(read_config(run_dir))
    spec = read_model_json(run_dir)
    frozen: dict[str, str] = spec.get("frozen", {})
    graphdefs, abstract = {}, {}
    for name, module_spec in spec["modules"].items():
        graphdefs[name], abstract[name] = split_params(
            build_abstract(MODULE_CLASSES[module_spec["class"]], module_spec["kwargs"], dtype=dtype))
    item = "ema" if use_ema and getattr(config, "ema", False) else "params"
    trained = {name: shape_tree(tree) for name, tree in abstract.items() if name not in frozen}
    params = restore_params(run_dir / CHECKPOINTS / str(step) / item, trained)
    for name, relative in frozen.items():
        params[name] = restore_params(run_dir / relative, shape_tree(abstract[name]))
    return {name: nnx.merge(graphdefs[name], params[name]) for name in spec["modules"]}, config
