"""``--cache-latents``: encode the data set once, then train the diffusion model from the cache.

The cache stores, per image, the posterior mean and (clamped) log-variance of the frozen encoder and
the label, as ``.npy`` files under ``<run>/latents/``. Training still draws a new posterior sample
z = mean + exp(logvar / 2) eps every step, exactly the distribution the reference's ``VAE.encode``
gives, but without running the encoder (for the paper's autoencoder at 256x256, most of a step).
The images are encoded unflipped, so the cache cannot be combined with random flips.

``meta.json`` records what was encoded (autoencoder checkpoint, data set, size, count); a cache that
does not match is rebuilt. :func:`latent_dataset` is the cache as a Grain data set of shuffled batches (a
new permutation per epoch); :class:`LatentLoader` is its checkpointable iterator, read ahead on threads.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from medfusion_jax.data import ImageSource, make_loader
from medfusion_jax.images import write_json_atomic
from medfusion_jax.mesh import global_batch

FIELDS = ("mean", "logvar", "label")
#: Length of the endless latent data set (batches; more than any run takes).
_ENDLESS = 2**62


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def encode_source(source: ImageSource, vae_graph: nnx.GraphDef, vae_params: Any, mesh: Mesh, *,
                  batch_size: int) -> dict[str, np.ndarray]:
    """Posterior (mean, log-variance) and label of every readable image of ``source``, in float32.

    Every process reads its shard of the images; the result is gathered on every process.
    """
    processes, index = jax.process_count(), jax.process_index()
    local_batch = batch_size // processes
    batches = math.ceil(math.ceil(len(source) / processes) / local_batch)
    loader = make_loader(source, global_batch_size=batch_size, seed=0, shuffle=False, num_epochs=1, flips="",
                         drop_remainder=False, shard_index=index, shard_count=processes)

    @jax.jit
    def encode(params, images):
        return nnx.merge(vae_graph, params).posterior(images)

    spatial = (source.image_size,) * source.info.spatial_dims  # square images or cubic volumes
    parts: dict[str, list[np.ndarray]] = {k: [] for k in FIELDS}
    with loader, tqdm(total=batches, desc="encoding latents", unit="batch", disable=index != 0) as bar:
        for _ in range(batches):
            local = next(loader, None)
            count = 0 if local is None else len(local["label"])
            images = np.zeros((local_batch, *spatial, source.channels), np.float32)
            labels = np.zeros((local_batch,), np.int32)
            if count:
                images[:count], labels[:count] = local["image"], local["label"]
            valid = np.arange(local_batch) < count
            batch = global_batch({"image": images, "label": labels, "valid": valid}, mesh)
            mean, logvar = encode(vae_params, batch["image"])
            keep = _to_host(batch["valid"])
            parts["mean"].append(_to_host(mean)[keep])
            parts["logvar"].append(_to_host(logvar)[keep])
            parts["label"].append(_to_host(batch["label"])[keep])
            bar.update(1)
    return {k: np.concatenate(v) for k, v in parts.items()}


def load_or_build(directory: str | Path, fingerprint: dict[str, Any], build) -> dict[str, np.ndarray]:
    """The cache in ``directory`` if its ``meta.json`` equals ``fingerprint``, else ``build()`` saved there.

    Process 0 writes; the others wait for it and read the files.
    """
    directory = Path(directory)
    meta_path = directory / "meta.json"
    fresh = meta_path.exists() and json.loads(meta_path.read_text()) == fingerprint
    if not fresh:
        arrays = build()
        if jax.process_index() == 0:
            directory.mkdir(parents=True, exist_ok=True)
            meta_path.unlink(missing_ok=True)
            for name in FIELDS:
                np.save(directory / f"{name}.npy", arrays[name])
            # meta.json last: an interrupted write leaves no cache that looks complete.
            write_json_atomic(meta_path, fingerprint)
        multihost_utils.sync_global_devices("latent cache written")
        return arrays
    return {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in FIELDS}


class _GlobalBatch:
    """Element j of the latent data set: this process's rows of global batch j.

    Global batch j of epoch e = j // (N // B) takes rows [k B, (k + 1) B) of the permutation of epoch e
    (numpy's default generator seeded with (seed, e)); process p takes its contiguous part of those rows
    (drop-last epochs, so every epoch's batches are full)."""

    def __init__(self, arrays: dict[str, np.ndarray], *, global_batch_size: int, seed: int, shard_index: int,
                 shard_count: int):
        self.arrays = arrays
        self.count = len(arrays["label"])
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // shard_count
        self.shard_index = shard_index
        self.seed = seed
        self.batches_per_epoch = self.count // global_batch_size
        self._lock = threading.Lock()
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:  # Grain reads ahead on threads; the newest two epochs are kept
            if epoch not in self._permutations:
                self._permutations[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.count)
                for old in sorted(self._permutations)[:-2]:
                    del self._permutations[old]
            return self._permutations[epoch]

    def __call__(self, j: int) -> dict[str, np.ndarray]:
        epoch, within = divmod(int(j), self.batches_per_epoch)
        start = within * self.global_batch_size + self.shard_index * self.local_batch_size
        rows = np.sort(self._permutation(epoch)[start:start + self.local_batch_size])
        return {name: np.asarray(self.arrays[name][rows]) for name in FIELDS}


def latent_dataset(arrays: dict[str, np.ndarray], *, global_batch_size: int, seed: int, shard_index: int,
                   shard_count: int) -> grain.MapDataset:
    """The cache as an endless Grain data set of this process's batches (element j: global batch j)."""
    count = len(arrays["label"])
    if count < global_batch_size:
        raise ValueError(f"the latent cache holds {count} images, fewer than one batch of {global_batch_size}")
    return grain.MapDataset.range(_ENDLESS).map(_GlobalBatch(
        arrays, global_batch_size=global_batch_size, seed=seed, shard_index=shard_index, shard_count=shard_count))


class LatentLoader:
    """Shuffled batches ``{"mean", "logvar", "label"}`` of this process's rows, forever: the iterator of
    :func:`latent_dataset`, read ahead by Grain on ``read_threads`` threads.

    State: ``{"batches": batches handed out}`` (Grain's ``next_index``; the name run folders have held)."""

    def __init__(self, arrays: dict[str, np.ndarray], *, global_batch_size: int, seed: int,
                 shard_index: int, shard_count: int, read_threads: int = 2):
        dataset = latent_dataset(arrays, global_batch_size=global_batch_size, seed=seed, shard_index=shard_index,
                                 shard_count=shard_count)
        self._iterator = iter(dataset.to_iter_dataset(
            grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads)))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict[str, Any]:
        return {"batches": int(self._iterator.get_state()["next_index"])}

    def set_state(self, state: dict[str, Any]) -> None:
        self._iterator.set_state({"next_index": int(state["batches"])})
