"""Checkpoints of a training run (Orbax ``CheckpointManager``) and :func:`load_trained` for later commands.

Layout of a run directory::

    RUN/config.json            the full configuration (medfusion_jax.training.config)
    RUN/model.json             constructor arguments of every network, class names
    RUN/checkpoints/<step>/    params/, opt_state/, ema/ (if enabled), progress/ (step, RNG key),
                               data/ (the input pipeline's position: one JSON file per process)
    RUN/autoencoder/params/    diffusion runs: a copy of the frozen autoencoder's weights
    RUN/metrics.jsonl, RUN/events.out.tfevents.*, RUN/images/, RUN/loss_curve.png

Saving is asynchronous by default: ``save`` returns once the arrays are copied to host memory, and
the files are written in the background (so the next step can reuse the device buffers). The manager
keeps the last K checkpoints. The data item stores a snapshot of the iterator state taken at the
save, through Grain's Orbax handler (one file per process).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp
from flax import nnx

from medfusion_jax.training import config as config_lib
from medfusion_jax.training.modules import MODULE_CLASSES, build_abstract, shape_tree, split_params

CHECKPOINTS = "checkpoints"
MODEL_JSON = "model.json"
AUTOENCODER_COPY = "autoencoder"


class _IteratorStateSnapshot:
    """What Grain's checkpoint handler saves and restores: an iterator state frozen at save time.

    The handler serialises ``get_state()`` of non-``DatasetIterator`` items as bytes, so the state is
    handed over as JSON bytes; restoring stores the bytes it is given.
    """

    def __init__(self, state: dict[str, Any] | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state)

    def start_prefetch(self) -> None:
        """Nothing to prefetch: this is only a state holder."""


class Checkpointer:
    """Saves and restores the train state (a dict of pytrees) and the data iterator's state."""

    def __init__(self, run_dir: str | Path, *, keep: int = 3, async_save: bool = True):
        self.directory = Path(run_dir).absolute() / CHECKPOINTS
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: dict[str, Any], data_state: dict[str, Any] | None) -> None:
        items = {name: ocp.args.StandardSave(tree) for name, tree in state.items()}
        items["data"] = grain.checkpoint.CheckpointSave(_IteratorStateSnapshot(data_state))
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(state, data iterator state) of ``step``; ``abstract_state`` gives structure, dtypes and shardings."""
        items = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_state.items()}
        items["data"] = grain.checkpoint.CheckpointRestore(_IteratorStateSnapshot())
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        state = {name: restored[name] for name in abstract_state}
        return state, restored["data"].state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def write_model_json(run_dir: str | Path, modules: dict[str, dict[str, Any]], class_names: tuple[str, ...],
                     frozen: dict[str, str] | None = None) -> None:
    """Record the networks of a run: ``{name: {"class": "VAE", "kwargs": {...}}}``, the class names, and
    ``frozen``: {name: directory relative to the run} for networks stored outside the checkpoints."""
    payload = dict(modules=modules, class_names=list(class_names), frozen=frozen or {})
    (Path(run_dir) / MODEL_JSON).write_text(json.dumps(payload, indent=1) + "\n")


def read_model_json(run_dir: str | Path) -> dict[str, Any]:
    return config_lib.read_run_json(Path(run_dir) / MODEL_JSON,
                                    "missing (not a training run directory, or one still being set up)")


def save_params(directory: str | Path, params: Any) -> None:
    """Write one pytree of parameters with Orbax (used for the autoencoder copy of diffusion runs)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(directory).absolute(), params, force=True)


def restore_params(directory: str | Path, abstract: Any) -> Any:
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(Path(directory).absolute(), abstract)


def resolve_checkpoint(path: str | Path) -> tuple[Path, int]:
    """(run directory, step) for a run directory (its latest checkpoint) or a ``RUN/checkpoints/<step>`` path."""
    path = Path(path).expanduser().absolute()
    if (path / config_lib.CONFIG_JSON).is_file():
        run_dir = path
        steps = sorted(int(p.name) for p in (path / CHECKPOINTS).glob("*") if p.name.isdigit()) \
            if (path / CHECKPOINTS).is_dir() else []
        if not steps:
            raise FileNotFoundError(f"{path}: this run directory has no checkpoint yet")
        return run_dir, steps[-1]
    if path.name.isdigit() and path.parent.name == CHECKPOINTS and (path.parent.parent / config_lib.CONFIG_JSON).is_file():
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

    ``config`` is the run's :class:`~medfusion_jax.training.config.AutoencoderConfig` or
    :class:`~medfusion_jax.training.config.DiffusionConfig` (e.g. ``config.data.dataset``,
    ``config.schedule`` for the noise schedule, ``config.data.image_size``). ``dtype`` is the compute
    dtype of the returned modules. Raises FileNotFoundError naming the path when it is not a run or
    checkpoint.
    """
    run_dir, step = resolve_checkpoint(path)
    config = config_lib.from_dict(config_lib.read_config(run_dir))
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
