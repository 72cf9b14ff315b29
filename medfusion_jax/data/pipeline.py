"""The Grain input pipeline used by all training and evaluation.

:func:`make_loader` turns any :class:`~medfusion_jax.data.source.ImageSource` into a checkpointable
iterator of batches ``{"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]}`` (numpy,
NHWC), where ``B = global_batch_size // shard_count`` on each process.

Order of operations (Grain ``MapDataset`` until the hand-over to worker processes)::

    range(len(source)) -> shuffle(seed), a new permutation each epoch -> repeat(num_epochs)
      -> tag each element with its position in this global stream
      -> shard: of every global batch (global_batch_size consecutive positions), process p takes the
         p-th block of B consecutive positions
      -> load (decode, resize, crop) and flip, in `worker_count` processes (or in threads of
         this process), in chunks of consecutive images
      -> drop unreadable images (counted) -> batch, normalised to [-1, 1]

Properties:

* Determinism: the batches depend only on (source, seed, shuffle, num_epochs, flips, batch size,
  shard index/count). The worker count and chunk size change speed, never content: Grain hands
  each worker a strided slice of chunks and interleaves them back in order, and batching happens
  after the hand-over.
* Shuffling: Grain's index shuffle, a seeded permutation per epoch (like the reference's seeded
  ``RandomSampler`` without replacement, not the same order).
* Sharding: the processes together see each global batch of a single-process run, in its order:
  process p's local batch is rows [p B, (p + 1) B) of the single-process batch, so the assembled
  global batch (processes in order, as ``jax.make_array_from_process_local_data`` places them) is the
  same array, row for row. Every example is seen exactly once per epoch. (An interleaved split,
  positions p, p + P, ..., would see the same images per step in another row order, and everything
  keyed by row, such as the posterior noise of the autoencoder, would differ from the one-process run.)
* Resumption: :meth:`Loader.get_state` is ``{"position": elements consumed, "skipped": count}``
  (JSON, independent of the worker count); :meth:`Loader.set_state` restarts the stream at that
  position, so a resumed run sees exactly the batches an uninterrupted run would have seen.
  :class:`Loader` is a ``grain.DatasetIterator``, so Grain's / Orbax's checkpoint handlers save it.
* Flips (the reference's ``RandomHorizontalFlip``/``RandomVerticalFlip``, p = 0.5 each): decided
  by a hash of (seed, position), so they change from epoch to epoch and survive resumption. The
  reference flips before its (optional) centre crop; here images are already cropped, which for the
  reference's square, pre-sized data is the same.
* Normalisation: the reference's ``ToTensor`` then ``Normalize(0.5, 0.5)``, computed in float32
  exactly as torch does (``(x / 255 - 0.5) / 0.5``).
* Unreadable images (:class:`~medfusion_jax.data.errors.ImageError`) are skipped and counted
  (:attr:`Loader.skipped`, logged with their path) unless ``strict``, which stops with the path.
* Worker processes: Grain reads its settings from absl flags, which are unparsed outside
  ``absl.app``; :func:`ensure_absl_flags_parsed` marks them parsed (defaults, ``sys.argv``
  untouched) in the main process and in every worker.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grain
import numpy as np
from absl import flags

from medfusion_jax.data.errors import ImageError
from medfusion_jax.data.source import ImageSource
from medfusion_jax.images import normalize

log = logging.getLogger(__name__)

#: Grain copies arrays at least this large into shared memory; see Loader._parent_iterator.
_NEVER_SHM = 2**62
#: How many skipped paths are logged individually (the count is always complete).
_LOGGED_SKIPS = 20


def ensure_absl_flags_parsed() -> None:
    """Marks absl flags parsed (keeping defaults) if no ``absl.app`` did; Grain needs them."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _worker_init(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    ensure_absl_flags_parsed()


def _mix(seed: int, position: int) -> int:
    """SplitMix64 of (seed, position): cheap, well-mixed bits for per-element decisions."""
    z = (seed * 0x9E3779B97F4A7C15 + position + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def _hflip(image: np.ndarray) -> np.ndarray:
    """Contiguous left-right flip of ``[(D,) H, W, C]``; moving whole pixels is 2-3x faster than bytes."""
    pixel = np.dtype((np.void, image.shape[-1] * image.itemsize))
    flipped = np.ascontiguousarray(np.ascontiguousarray(image).view(pixel)[..., ::-1, :])
    return flipped.view(image.dtype).reshape(image.shape)


def _with_position(position: int, index: int) -> tuple[int, int]:
    return position, index


class _Unreadable:
    """Marker for an image that could not be read; travels to the main process to be counted."""

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message

    def __reduce__(self):
        return (_Unreadable, (self.message,))


class _Load:
    """Loads and flips one element; a picklable callable so that worker processes can run it."""

    def __init__(self, source: ImageSource, flips: str, seed: int, strict: bool):
        self.source = source
        self.flips = flips
        self.seed = seed
        self.strict = strict

    def __call__(self, element: tuple[int, int]) -> dict[str, Any] | _Unreadable:
        position, index = element
        try:
            item = self.source[index]
        except ImageError as e:
            if self.strict:
                raise
            return _Unreadable(str(e))
        image = item["image"]
        if self.flips:
            bits = _mix(self.seed, position)
            if "h" in self.flips and bits & 1:
                image = _hflip(image)
            if "v" in self.flips and bits & 2:
                image = np.flip(image, axis=-3)  # H
            if "d" in self.flips and bits & 4:
                image = np.flip(image, axis=-4)  # D (volumes)
        return {"image": image, "label": item["label"]}


def _pack(elements: list[dict[str, Any] | _Unreadable]) -> dict[str, Any]:
    """A chunk of consecutive elements: the uint8 images of the readable ones, and per position
    ``None`` (readable) or the error message.

    Chunks carry images between processes in one shared-memory block instead of one per image.
    They stay uint8 (a quarter of float32) until the main process normalises them straight into
    the batch buffer: fewer bytes copied mattered more than moving that arithmetic to the workers.
    """
    good = [e for e in elements if not isinstance(e, _Unreadable)]
    errors = tuple(e.message if isinstance(e, _Unreadable) else None for e in elements)
    if not good:
        return {"errors": errors}
    return {
        "images": np.stack([e["image"] for e in good]),
        "labels": np.asarray([e["label"] for e in good], np.int32),
        "errors": errors,
    }


class Loader(grain.DatasetIterator):
    """Checkpointable iterator of normalised batches (see the module docstring).

    ``skipped`` counts unreadable images skipped so far (restored with the state). Close it (or use
    it as a context manager) to stop worker processes early.
    """

    def __init__(
        self,
        dataset: grain.MapDataset,
        *,
        batch_size: int,
        drop_remainder: bool,
        worker_count: int,
        worker_buffer_size: int,
        read_threads: int,
        chunk_size: int,
        description: str = "",
    ):
        super().__init__()
        self._dataset = dataset
        self._batch_size = batch_size
        self._drop_remainder = drop_remainder
        self._worker_count = worker_count
        self._worker_buffer_size = worker_buffer_size
        self._read_threads = read_threads
        self._chunk_size = chunk_size
        self._description = description
        self._position = 0
        self._skipped = 0
        self._iterator: grain.DatasetIterator | None = None
        self._chunk: dict[str, Any] | None = None
        self._cursor = 0  # next position within the current chunk
        self._taken = 0  # readable images of the current chunk already handed out

    @property
    def skipped(self) -> int:
        return self._skipped

    @property
    def position(self) -> int:
        return self._position

    def _parent_iterator(self) -> grain.DatasetIterator:
        if self._iterator is None:
            chunks = self._dataset[self._position :].batch(self._chunk_size, batch_fn=_pack)
            ds = chunks.to_iter_dataset(
                grain.ReadOptions(
                    num_threads=self._read_threads,
                    prefetch_buffer_size=max(2 * self._batch_size // self._chunk_size, 2 * self._read_threads),
                )
            )
            if self._worker_count > 0:
                ensure_absl_flags_parsed()
                # Chunks travel pickled through the worker's queue rather than in per-chunk shared
                # memory: as fast for uint8 chunks here, and closing a loader early leaves no
                # segments behind for the resource tracker to warn about at exit.
                ds = grain.experimental.WithOptionsIterDataset(
                    ds, grain.experimental.DatasetOptions(min_shm_size=_NEVER_SHM)
                )
                ds = ds.mp_prefetch(
                    grain.MultiprocessingOptions(
                        num_workers=self._worker_count,
                        per_worker_buffer_size=self._worker_buffer_size,
                    ),
                    worker_init_fn=_worker_init,
                )
            self._iterator = iter(ds)
            self._chunk = None
        return self._iterator

    def __next__(self) -> dict[str, np.ndarray]:
        iterator = self._parent_iterator()
        pieces: list[tuple[np.ndarray, np.ndarray]] = []
        count = 0
        batch = None
        while count < self._batch_size:
            if self._chunk is None or self._cursor == len(self._chunk["errors"]):
                try:
                    self._chunk = next(iterator)
                except StopIteration:
                    self._chunk = None
                    break
                self._cursor = self._taken = 0
            errors = self._chunk["errors"]
            start = self._taken
            while self._cursor < len(errors) and count < self._batch_size:
                message = errors[self._cursor]
                self._cursor += 1
                self._position += 1
                if message is None:
                    self._taken += 1
                    count += 1
                    continue
                self._skipped += 1
                if self._skipped <= _LOGGED_SKIPS:
                    log.warning("skipped unreadable image (%d so far): %s", self._skipped, message)
            if self._taken > start:
                images = self._chunk["images"]
                if batch is None:
                    batch = np.empty((self._batch_size,) + images.shape[1:], np.float32)
                done = count - (self._taken - start)
                normalize(images[start : self._taken], out=batch[done:count])
                pieces.append(self._chunk["labels"][start : self._taken])
        if count == 0 or (self._drop_remainder and count < self._batch_size):
            raise StopIteration
        return {"image": batch[:count], "label": np.concatenate(pieces)}

    def get_state(self) -> dict[str, Any]:
        return {"position": self._position, "skipped": self._skipped}

    def set_state(self, state: dict[str, Any]) -> None:
        self._close_parent()
        self._position = int(state["position"])
        self._skipped = int(state.get("skipped", 0))

    def start_prefetch(self) -> None:
        self._parent_iterator().start_prefetch()

    def _close_parent(self) -> None:
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
        self._chunk = None

    def close(self) -> None:
        self._close_parent()
        super().close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __str__(self) -> str:
        return f"Loader({self._description})"


class _BlockShard:
    """Local element j of process p is global position (j // B) * B P + p B + j % B (B local batch, P processes).

    A picklable index map (worker processes receive the dataset by pickling).
    """

    def __init__(self, stream: grain.MapDataset, local_batch: int, shard_index: int, shard_count: int):
        self.stream, self.local_batch = stream, local_batch
        self.shard_index, self.shard_count = shard_index, shard_count

    def global_position(self, j: int) -> int:
        batch, row = divmod(j, self.local_batch)
        return (batch * self.shard_count + self.shard_index) * self.local_batch + row

    def __len__(self) -> int:
        total, block = len(self.stream), self.local_batch * self.shard_count
        full, rest = divmod(total, block)
        return full * self.local_batch + min(max(rest - self.shard_index * self.local_batch, 0), self.local_batch)

    def __call__(self, j: int):
        return self.stream[self.global_position(j)]


def _parse_flips(flips: str | bool | None) -> str:
    if flips is True:
        return "hv"
    if not flips:
        return ""
    if not isinstance(flips, str) or set(flips) - {"h", "v", "d"}:
        raise ValueError(f"flips must be a combination of 'h', 'v' and (volumes) 'd', or a bool, got {flips!r}")
    return flips


def make_loader(
    source: ImageSource,
    *,
    global_batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    flips: str | bool = "",
    worker_count: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool = True,
    strict: bool = False,
    read_threads: int | None = None,
    worker_buffer_size: int = 4,
    chunk_size: int = 8,
) -> Loader:
    """Builds the input pipeline over ``source`` (see the module docstring).

    Args:
      source: from :func:`medfusion_jax.data.make_dataset`.
      global_batch_size: images per step over all processes; must divide by ``shard_count``.
      seed: shuffling and flip seed (0 <= seed < 2**32).
      shuffle: a new permutation every epoch (training); ``False`` keeps source order (evaluation).
      num_epochs: passes over the data; ``None`` repeats forever (training runs by steps).
      flips: ``"h"``, ``"v"``, ``"hv"`` (``True``) or ``""`` (``False``, the reference's diffusion runs).
      worker_count: decoding processes; 0 decodes in ``read_threads`` threads of this process.
      shard_index, shard_count: this process's shard; ``None`` means ``jax.process_index()`` /
        ``jax.process_count()`` (both or neither).
      drop_remainder: drop the last partial batch (training); keep it for evaluation.
      strict: stop at the first unreadable image, with its path, instead of skipping it.
      read_threads: decoding threads per process; default 1 with worker processes (they are the
        parallelism), else up to 4 (PIL and the readers release the GIL while decoding).
      worker_buffer_size: chunks buffered per worker process.
      chunk_size: consecutive images decoded and sent between processes together (speed only).
    """
    if (shard_index is None) != (shard_count is None):
        raise ValueError("pass both shard_index and shard_count, or neither")
    if shard_index is None:
        import jax

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    if global_batch_size <= 0 or global_batch_size % shard_count:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                         f"shard_count {shard_count}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None or >= 1, got {num_epochs}")
    if len(source) == 0:
        raise ValueError(f"{source!r} is empty")
    if read_threads is None:
        read_threads = 1 if worker_count > 0 else min(4, os.cpu_count() or 1)
    ds = grain.MapDataset.range(len(source))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = ds.map_with_index(_with_position)
    if shard_count > 1:
        shard = _BlockShard(ds, global_batch_size // shard_count, shard_index, shard_count)
        ds = grain.MapDataset.range(len(shard)).map(shard)
    ds = ds.map(_Load(source, _parse_flips(flips), seed, strict))
    return Loader(
        ds,
        batch_size=global_batch_size // shard_count,
        drop_remainder=drop_remainder,
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        read_threads=read_threads,
        chunk_size=chunk_size,
        description=f"{source!r}, shard {shard_index}/{shard_count}, seed {seed}",
    )
