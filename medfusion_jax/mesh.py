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


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    from_environment: bool = False,
) -> None:
    """Join a multi-process run. Nothing happens for a single process without flags.

    With ``coordinator_address`` (host:port of process 0), ``num_processes`` and ``process_id`` given,
    they are used; with ``from_environment`` they are detected from the cluster's environment.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("--coordinator-address, --num-processes and --process-id go together: give all three")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif from_environment:
        jax.distributed.initialize()


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
