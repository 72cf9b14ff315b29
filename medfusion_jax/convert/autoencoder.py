"""A trained autoencoder from wherever it lives: one of our runs or an original Medfusion checkpoint.

The evaluation layer takes a VAE; this is where the commands get one. Run directories are read through
:mod:`medfusion_jax.run_folder`, original checkpoints (PyTorch Lightning ``.ckpt``, or ``.pt``/``.pth``
state_dicts) through the converter, without torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flax import nnx

from medfusion_jax.command import first_line
from medfusion_jax.convert.medfusion import read_autoencoder
from medfusion_jax.run_folder import (
    MODULE_CLASSES,
    build_abstract,
    load_trained,
    resolve_checkpoint,
    split_params,
)
from medfusion_jax.torch_file import TorchFileError


class CheckpointError(ValueError):
    """The autoencoder checkpoint could not be found or read; the message names the path."""


def load_autoencoder(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """(VAE, description) from any of:

    * an autoencoder training run directory (its latest checkpoint) or ``RUN/checkpoints/<step>``;
    * a diffusion run (directory or checkpoint): the frozen autoencoder it was trained on;
    * an original Medfusion checkpoint (``.ckpt`` of PyTorch Lightning, or a ``.pt``/``.pth``
      state_dict with the reference's constructor kwargs under ``hyper_parameters``): a ``VAE``, or the
      inner VAE (``vqvae.*``) of a ``VAEGAN``.

    The description holds ``kind`` ('run' or 'original'), ``path`` and, for runs, ``dataset``,
    ``data_dir``, ``image_size`` and ``step``. Raises :class:`CheckpointError` naming the path.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if p.is_file():
        return _load_original(p)
    try:
        run_dir, step = resolve_checkpoint(p)
        modules, config = load_trained(p)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: cannot load the run: {first_line(err)}") from err
    if "vae" not in modules:
        raise CheckpointError(f"{path}: the run has no autoencoder (networks: {', '.join(modules)})")
    data = config.data
    info = dict(kind="run", path=str(run_dir), step=step, dataset=data.dataset, data_dir=data.data_dir,
                image_size=data.image_size)
    return modules["vae"], info


def _load_original(path: Path) -> tuple[Any, dict[str, Any]]:
    """The autoencoder of an original checkpoint, read by the converter (``convert medfusion``)."""
    try:
        converted, _, extra = read_autoencoder(path)
    except (TorchFileError, OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: not a Medfusion autoencoder checkpoint: {first_line(err)}") from err
    graphdef, _ = split_params(build_abstract(MODULE_CLASSES[converted.cls], converted.kwargs))
    vae = nnx.merge(graphdef, converted.params)
    return vae, dict(kind="original", path=str(path), reference_class=extra["info"]["reference_class"],
                     hyper_parameters_stored=True)
