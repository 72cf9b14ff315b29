"""The one training loop both stages share.

Per step: the next batch of this process's rows is assembled into a global array sharded over the
mesh, and a ``jax.jit`` step (train state donated, so parameters and optimizer state are updated in
place) returns the new state and scalar metrics. The metrics of step s are read while step s + 1 runs,
so reading them never stalls the device; every step is checked for NaN/Inf before anything is saved.

* Checkpoints (Orbax, async) every ``checkpoint_every`` steps, at the end, and on Ctrl-C / SIGTERM.
* Resuming restores parameters, optimizer state, EMA, step, RNG and the data iterator's position, and
  the step keys are ``fold_in(run key, step)``, so a killed run that resumes produces the same losses,
  step for step, as one that was never interrupted.
* A non-finite loss or gradient norm stops the run with :class:`NonFiniteLossError` naming the step;
  nothing is saved after it, so the last checkpoint is the last good state.
* A run directory written by another configuration is refused (:class:`ConfigMismatchError` names
  the differing keys).
* Reports: tqdm progress bar (step/s, loss), ``metrics.jsonl``, TensorBoard events, PNG grids every
  ``image_every`` steps, ``loss_curve.png`` at the end.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from medfusion_jax import config as config_lib
from medfusion_jax import run_folder
from medfusion_jax.images import save_png
from medfusion_jax.mesh import check_batch_size, global_batch, make_mesh, replicated, state_shardings
from medfusion_jax.plots import line_plot
from medfusion_jax.training.checkpointing import Checkpointer
from medfusion_jax.training.logging import (
    MetricsLog,
    TensorBoardWriter,
    downsample_records,
    read_metrics,
)
from medfusion_jax.training.state import compiled_step

State = dict[str, Any]
StepChoice = Callable[[int], tuple[Callable, dict[str, Any]]]


class BatchIterator(Protocol):
    """An iterator of process-local numpy batches whose position can be saved and restored."""

    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


class ConfigMismatchError(ValueError):
    """The run directory holds a run of another configuration."""

    def __init__(self, run_dir: Path, differing: dict[str, tuple[Any, Any]]):
        self.differing = differing
        lines = "\n".join(f"  {key}: saved {a!r}, now {b!r}" for key, (a, b) in differing.items())
        super().__init__(
            f"{run_dir} holds a run with another configuration; differing keys:\n{lines}\n"
            "Use another --run-dir, or the saved values to resume it."
        )


class NonFiniteLossError(RuntimeError):
    """A loss or gradient norm became NaN or infinite."""

    def __init__(self, step: int, name: str, value: float, last_checkpoint: int | None, run_dir: Path):
        self.step = step
        self.last_checkpoint = last_checkpoint
        kept = (f"the last good checkpoint is step {last_checkpoint} in {run_dir / 'checkpoints'}"
                if last_checkpoint is not None else "no checkpoint had been written yet")
        super().__init__(f"{name} is {value} at step {step}; training stopped ({kept})")


@dataclasses.dataclass
class Task:
    """A stage as the loop sees it.

    ``step_for(batch_index)`` returns the step function for that batch and its static keyword
    arguments (the GAN stage switches variants at its start step); every step function has the
    signature ``fn(state, constants, batch) -> (state, metrics)``. ``preview(state)`` returns a uint8
    HWC image grid or None.
    """

    name: str
    spec: Any
    init_state: State
    constants: dict[str, Any]
    step_for: StepChoice
    iterator: BatchIterator
    total_steps: int
    images_per_step: int
    preview: Callable[[State], np.ndarray | None] | None = None


@dataclasses.dataclass
class TrainResult:
    final_step: int
    start_step: int
    interrupted: bool
    last_metrics: dict[str, float]
    run_dir: Path


def prepare_run_dir(config: config_lib.Config, *, resume: bool | None = None) -> int | None:
    """Check ``run_dir`` against ``config`` and write ``config.json``; return the step to resume from.

    ``resume``: None resumes from the last checkpoint if there is one; True requires one
    (FileNotFoundError otherwise); False requires there to be none (FileExistsError otherwise).
    Raises :class:`ConfigMismatchError` if the saved configuration differs in a key that a resumed
    run may not change.
    """
    run_dir = Path(config.run.run_dir)
    current = config_lib.to_dict(config)
    if (run_dir / run_folder.CONFIG_JSON).exists():
        differing = config_lib.differing_keys(run_folder.read_config(run_dir), current)
        if differing:
            raise ConfigMismatchError(run_dir, differing)
    checkpointer_dir = run_dir / "checkpoints"
    steps = sorted(int(p.name) for p in checkpointer_dir.glob("*") if p.name.isdigit()) \
        if checkpointer_dir.is_dir() else []
    if steps and resume is False:
        raise FileExistsError(f"{run_dir} already has checkpoints (last: step {steps[-1]}); "
                              "resume it (the default) or choose another --run-dir")
    if not steps and resume is True:
        raise FileNotFoundError(f"--resume: {run_dir} has no checkpoint to continue from")
    if jax.process_index() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        run_folder.write_config(config, run_dir)
    return steps[-1] if steps else None


class _InterruptFlag:
    """Set by the first SIGINT/SIGTERM; a second SIGINT interrupts at once (KeyboardInterrupt)."""

    def __init__(self, install: bool):
        self.raised = False
        self._previous: dict[int, Any] = {}
        if install and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised = True
        tqdm.write(f"received signal {signum}: saving a checkpoint after this step, then stopping "
                   "(Ctrl-C again to stop at once)")

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _interrupted_everywhere(flag: bool, step: int, every: int) -> bool:
    """Whether to stop after this step. With several processes the flags are combined (one small
    all-gather every ``every`` steps), so that all processes stop, and save, at the same step."""
    if jax.process_count() == 1:
        return flag
    if step % every:
        return False
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def train(
    task: Task,
    config: config_lib.Config,
    *,
    start_step: int | None = None,
    mesh: Mesh | None = None,
    handle_signals: bool = True,
) -> TrainResult:
    """Run ``task`` from ``start_step`` (a checkpoint step, see :func:`prepare_run_dir`) to its end."""
    run = config.run
    run_dir = Path(run.run_dir)
    mesh = mesh or make_mesh()
    check_batch_size(run.batch_size, mesh)
    lead = jax.process_index() == 0
    shardings = state_shardings(task.init_state, mesh, run.fsdp)
    checkpointer = Checkpointer(run_dir, keep=run.keep_checkpoints, async_save=run.async_checkpoints)
    if start_step is None:
        state = jax.device_put(task.init_state, shardings)
        step = 0
    else:
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                                task.init_state, shardings)
        state, data_state = checkpointer.restore(start_step, abstract)
        task.iterator.set_state(data_state)
        step = start_step
    first_step = step
    constants = jax.device_put(task.constants, replicated(mesh))

    metrics_log = MetricsLog(run_dir, resume_step=step) if lead else None
    tensorboard = TensorBoardWriter(run_dir) if lead else None
    interrupt = _InterruptFlag(handle_signals)
    window: dict[str, list[float]] = {}
    window_start = time.perf_counter()
    last_saved = start_step
    last_metrics: dict[str, float] = {}
    pending: tuple[int, dict[str, jax.Array]] | None = None
    bar = tqdm(total=task.total_steps, initial=step, unit="step", desc=task.name, disable=not lead,
               dynamic_ncols=True)

    def check(step_done: int, metrics: dict[str, jax.Array]) -> None:
        """Read one step's metrics: NaN check, then into the reporting window."""
        nonlocal window_start, last_metrics
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        for name in ("loss", *sorted(k for k in values if k != "loss")):
            if not math.isfinite(values[name]):
                raise NonFiniteLossError(step_done, name, values[name], last_saved, run_dir)
        last_metrics = values
        for k, v in values.items():
            window.setdefault(k, []).append(v)
        if step_done % run.log_every == 0 or step_done == task.total_steps:
            means = {k: float(np.mean(v)) for k, v in window.items()}
            elapsed = time.perf_counter() - window_start
            count = len(window["loss"])
            means["img_per_s"] = count * task.images_per_step / elapsed if elapsed > 0 else 0.0
            if lead:
                metrics_log.write(step_done, means)
                tensorboard.scalars(step_done, {f"train/{k}": v for k, v in means.items()})
                bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
            window.clear()
            window_start = time.perf_counter()

    def save(step_done: int) -> None:
        nonlocal last_saved
        checkpointer.save(step_done, state, task.iterator.get_state())
        last_saved = step_done

    def preview(step_done: int) -> None:
        if task.preview is None:
            return
        image = task.preview(state)
        if image is not None and lead:
            save_png(run_dir / "images" / f"step_{step_done:07d}.png", image)
            tensorboard.image(step_done, "samples" if task.name == "diffusion" else "reconstructions", image)

    interrupted = False
    try:
        while step < task.total_steps:
            try:
                local = next(task.iterator)
            except StopIteration:
                raise RuntimeError(f"the data ran out at step {step} of {task.total_steps}") from None
            fn, static = task.step_for(step)
            state, metrics = compiled_step(fn, static, task.spec, shardings, mesh)(
                state, constants, global_batch(local, mesh))
            step += 1
            if pending is not None:
                check(*pending)
            pending = (step, metrics)
            bar.update(1)
            stop = _interrupted_everywhere(interrupt.raised, step, run.log_every)
            if step % run.checkpoint_every == 0 or step == task.total_steps or stop:
                check(*pending)
                pending = None
                save(step)
            if run.image_every and step % run.image_every == 0:
                preview(step)
            if stop:
                interrupted = True
                break
        # The last step, and an interrupted one, were checked and saved in the loop.
        if run.image_every and step % run.image_every and not interrupted and step > first_step:
            preview(step)
    finally:
        bar.close()
        interrupt.restore()
        checkpointer.wait()
        checkpointer.close()
        if lead:
            metrics_log.close()
            tensorboard.close()
            _plot_loss_curve(run_dir, task.name)
    return TrainResult(final_step=step, start_step=first_step, interrupted=interrupted,
                       last_metrics=last_metrics, run_dir=run_dir)


def _plot_loss_curve(run_dir: Path, name: str) -> None:
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    series = {key: downsample_records(records, key) for key in ("loss", "disc_loss")}
    series = {k: v for k, v in series.items() if v[0]}
    if series:
        line_plot(run_dir / "loss_curve.png", series, title=f"{name}: training loss", ylabel="loss")
