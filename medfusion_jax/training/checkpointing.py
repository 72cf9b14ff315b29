"""The training state's checkpoints: an Orbax ``CheckpointManager`` for the train state and the data iterator.

What a checkpoint holds (under ``RUN/checkpoints/<step>/``, the layout of :mod:`medfusion_jax.run_folder`):
params/, opt_state/, ema/ (if enabled), progress/ (step, RNG key) and data/ (the input pipeline's
position: one JSON file per process). Later commands read the weights back with
:func:`medfusion_jax.run_folder.load_trained`; this module is only the training side.

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

from medfusion_jax.run_folder import CHECKPOINTS


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
