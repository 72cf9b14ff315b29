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
import logging
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from medfusion_jax.run_folder import CHECKPOINTS

log = logging.getLogger(__name__)


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
        """(state, data iterator state) of ``step``; ``abstract_state`` gives structure, dtypes and shardings.

        A checkpoint written by another number of processes is resumed too: the train state is restored
        into this job's shardings, and the data position is carried over through the global stream (see
        :func:`convert_data_state`), so the job continues with the batches the old job would have read next.
        """
        items = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_state.items()}
        saved = _saved_data_states(self.directory / str(step) / "data")
        if saved is None or len(saved) == jax.process_count():
            items["data"] = grain.checkpoint.CheckpointRestore(_IteratorStateSnapshot())
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            return {name: restored[name] for name in abstract_state}, restored["data"].state
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        data_state = convert_data_state(saved, jax.process_index(), jax.process_count())
        if jax.process_index() == 0:
            log.warning("resuming step %d, written by %d process(es), with %d: the data stream continues at the "
                        "same global position, so the next batches are those the old job would have read",
                        step, len(saved), jax.process_count())
        return {name: restored[name] for name in abstract_state}, data_state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _saved_data_states(directory: Path) -> list[dict[str, Any]] | None:
    """The per-process data states of a checkpoint (``process_<i>-of-<n>.json``), in process order."""
    files = sorted(directory.glob("process_*-of-*.json"), key=lambda p: int(p.name.split("_")[1].split("-")[0]))
    if not files:
        return None
    return [json.loads(f.read_text()) for f in files]


def convert_data_state(saved: list[dict[str, Any]], process_index: int, process_count: int) -> dict[str, Any]:
    """This process's data state when a checkpoint of ``len(saved)`` processes resumes with ``process_count``.

    The image pipeline's state counts this process's consumed elements; with the block sharding of
    :func:`medfusion_jax.data.make_loader` (process p reads rows [pB, (p+1)B) of every global batch) the
    global position is their sum, and each of the new processes has consumed that divided by their
    number. The latent cache's state counts global batches, the same in every process.
    Raises ValueError when the global position does not split evenly (a stream cut inside a batch).
    """
    if all("batches" in s for s in saved):
        return dict(saved[0])
    if not all("position" in s for s in saved):
        raise ValueError(f"unknown data iterator states in the checkpoint: {saved}")
    total = sum(int(s["position"]) for s in saved)
    if total % process_count:
        raise ValueError(f"the checkpoint's data position {total} (written by {len(saved)} processes) does not "
                         f"split over {process_count} processes; resume with {len(saved)}")
    skipped = sum(int(s.get("skipped", 0)) for s in saved) if process_index == 0 else 0
    return {"position": total // process_count, "skipped": skipped}
