"""Devices and sharding: one ``Mesh`` over every device, data-parallel batches, replicated or FSDP state.

* The mesh has one axis, ``"data"``, over all devices of all processes.
* Batches are sharded along it (each device gets ``batch_size / num_devices`` images). Every process
  reads only its own rows (the Grain pipeline's shard) and :func:`global_batch` assembles the global
  array from the process-local pieces.
* Parameters and optimizer state are replicated, or, with ``fsdp``, each large array is split along
  its largest axis that the device count divides (ZeRO-3 style: XLA gathers the weights where a layer
  needs them and reduce-scatters the gradients). That fits the 194 M-parameter UNet with its Adam
  moments on small GPUs; the computed values are the same either way.
* Multi-host: :func:`initialize_distributed` calls ``jax.distributed.initialize`` with explicit
  flags, or with none so that JAX reads the cluster's environment (SLURM, Open MPI, TPU pods, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
#: Arrays smaller than this (elements) stay replicated under FSDP: splitting them saves no memory.
FSDP_MIN_SIZE = 2**14


#: Seconds a process waits for the whole job to come up, and seconds without a heartbeat after which a
#: process counts as lost (``jax.distributed``'s defaults).
INIT_TIMEOUT = 300
HEARTBEAT_TIMEOUT = 100
#: Seconds a process that fails waits for the others at JAX's shutdown barrier before it leaves the job at
#: once (:func:`leave_job`).
FAILED_SHUTDOWN_WAIT = 10.0
_joined = [False]


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    from_environment: bool = False,
    timeout: int = INIT_TIMEOUT,
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT,
) -> None:
    """Join a multi-process run. Nothing happens for a single process without flags.

    With ``coordinator_address`` (host:port of process 0), ``num_processes`` and ``process_id`` given,
    they are used; with ``from_environment`` they are detected from the cluster's environment. A process
    whose coordinator does not answer within ``timeout`` seconds ends with a ValueError that says so. When a
    process is missing, JAX itself ends the others after ``timeout`` (its DEADLINE_EXCEEDED abort); a
    process lost later (killed, its host gone) is detected after ``heartbeat_timeout`` seconds without a
    heartbeat, and JAX ends the others.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("--coordinator-address, --num-processes and --process-id go together: give all three")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process-id {process_id} must be in 0..{num_processes - 1} (--num-processes)")
        if process_id != 0:
            # JAX aborts the process (a fatal log, no Python exception) when it cannot reach the coordinator:
            # wait for its port here first, so that an absent coordinator gets a message and exit status 2.
            timeout = _wait_for_coordinator(coordinator_address, process_id, num_processes, timeout)
    elif not from_environment:
        return
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id, initialization_timeout=timeout,
                                   heartbeat_timeout_seconds=heartbeat_timeout)
        _joined[0] = True
    except Exception as err:  # noqa: BLE001 - JAX raises its runtime error type; the message is ours
        where = f"coordinator {coordinator_address}" if coordinator_address else "the cluster's coordinator"
        who = f"process {process_id} of {num_processes}" if process_id is not None else "this process"
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{who} could not join the job within {timeout} s at {where}: is every process started, with the "
            f"same --coordinator-address and --num-processes, and is process 0's address reachable? "
            f"(--init-timeout sets the wait; JAX: {first})") from None


def in_job() -> bool:
    """Whether this process joined a multi-process job (:func:`initialize_distributed`)."""
    return _joined[0]


def leave_job(exit_code: int, wait: float = FAILED_SHUTDOWN_WAIT) -> None:
    """End this process's part in a job after a failure, without hanging.

    JAX's shutdown (also run at exit) waits up to 300 s at a barrier for every process. When all of them
    failed alike (e.g. the same bad flag), they meet there at once and the job ends cleanly. When this
    process failed alone (say, a file only it could not read), the others are blocked in a collective or a
    barrier waiting for it, and the barrier would hold all of them for those 300 s. So the shutdown gets
    ``wait`` seconds; after that this process exits at once with ``exit_code`` (its message is already
    printed), and the others, no longer receiving its heartbeats, end within --heartbeat-timeout with
    JAX's message naming it. Nothing happens outside a job.
    """
    if not _joined[0]:
        return
    import os
    import sys
    import threading

    done = threading.Event()

    def shutdown():
        try:
            jax.distributed.shutdown()
        except Exception:  # noqa: BLE001 - leaving anyway; JAX has logged why
            pass
        finally:
            done.set()

    threading.Thread(target=shutdown, daemon=True).start()
    if not done.wait(wait):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


def _wait_for_coordinator(address: str, process_id: int, num_processes: int, timeout: int) -> int:
    """Wait until ``address`` (host:port) accepts connections; the seconds of ``timeout`` left (at least 1)."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator-address {address!r}: expected host:port")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return max(1, int(deadline - time.monotonic()))
        except OSError as err:
            if time.monotonic() >= deadline:
                raise ValueError(
                    f"process {process_id} of {num_processes} could not join the job within {timeout} s: the "
                    f"coordinator {address} (process 0) does not answer ({err.strerror or err}); is process 0 "
                    "started with this --coordinator-address, and is it reachable from here? (--init-timeout "
                    "sets the wait)") from None
            time.sleep(0.5)


def host_local(tree: Any) -> Any:
    """Arrays that span other processes' devices (e.g. replicated restored weights) as this process's own
    copy (numpy), so that they can be placed on a process-local mesh; other leaves unchanged."""
    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return x
    return jax.tree.map(local, tree)


def process_block(n: int) -> tuple[int, int]:
    """[start, stop) of this process's contiguous share of ``n`` items (all of them for one process)."""
    p, count = jax.process_index(), jax.process_count()
    return p * n // count, (p + 1) * n // count


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Every process's rows of ``local`` (any number per process, same trailing shape and dtype), in
    process order, on every process; ``local`` itself for one process."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils
    counts = np.asarray(multihost_utils.process_allgather(np.asarray([len(local)], np.int32))).reshape(-1)
    padded = np.zeros((int(counts.max()), *local.shape[1:]), local.dtype)
    padded[:len(local)] = local
    stacked = np.asarray(multihost_utils.process_allgather(padded))  # [processes, max rows, ...]
    return np.concatenate([stacked[p, :n] for p, n in enumerate(counts)])


def check_same_on_every_process(values: dict[str, Any], what: str) -> None:
    """Raise ValueError on every process when the processes hold different ``values`` (a flat dict of
    JSON-able settings), naming each differing key with every process's value; nothing for one process.

    A job whose processes were started with different settings would train or sample something else on
    each host, or hang in a collective of another shape; all of them stop before any work instead."""
    if jax.process_count() == 1:
        return
    import json
    encoded = np.frombuffer(json.dumps(values, sort_keys=True, default=str).encode(), np.uint8)
    lengths = gather_rows(np.asarray([len(encoded)], np.int64))
    chunks = np.split(gather_rows(encoded), np.cumsum(lengths)[:-1])
    every = [json.loads(bytes(chunk)) for chunk in chunks]
    keys = sorted(set().union(*every))
    differing = [k for k in keys if len({json.dumps(v.get(k), sort_keys=True) for v in every}) > 1]
    if differing:
        parts = [f"{k} ({', '.join(f'process {p}: {v.get(k)!r}' for p, v in enumerate(every))})" for k in differing]
        raise ValueError(f"the {len(every)} processes were started with different {what}: " + "; ".join(parts))


def barrier(name: str) -> None:
    """Wait until every process of the job reaches the barrier ``name`` (nothing for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh (axis ``"data"``) over ``devices`` (default: every device of every process)."""
    return Mesh(np.asarray(list(devices) if devices is not None else jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the devices."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], num_devices: int) -> PartitionSpec:
    """Split the largest axis that ``num_devices`` divides; small or indivisible arrays stay whole."""
    if num_devices == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
        return PartitionSpec()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % num_devices == 0:
            spec = [None] * len(shape)
            spec[axis] = DATA_AXIS
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_shardings(state: Any, mesh: Mesh, fsdp: bool = False) -> Any:
    """Shardings for a pytree of arrays: replicated, or FSDP by shape.

    The rule depends on the shape alone, so a parameter and its optimizer moments (same shape) always
    get the same sharding.
    """
    n = mesh.devices.size

    def sharding(leaf):
        if not fsdp:
            return replicated(mesh)
        return NamedSharding(mesh, fsdp_spec(tuple(np.shape(leaf)), n))

    return jax.tree.map(sharding, state)


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n or batch_size % jax.process_count():
        raise ValueError(
            f"--batch-size {batch_size} must be a multiple of the {n} devices "
            f"({jax.process_count()} processes) so that every device gets the same number of images"
        )


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays sharded along the batch from this process's rows of every field."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}
