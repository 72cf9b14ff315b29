"""Batched, jitted Inception feature extraction with a progress bar."""

from __future__ import annotations

import functools
import os
from typing import Iterable, Iterator

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from medfusion_jax.pretrained.inception import InceptionV3
from medfusion_jax.pretrained.inception_weights import load_inception


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Check one image is uint8 and make it [H, W, 3]: gray [H, W] or [H, W, 1] is copied to 3 channels."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image [H, W], [H, W, 1] or [H, W, 3], got shape {image.shape}")
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array) -> dict[str, jax.Array]:
    # Module-level so that extractors of the same architecture share compiled code.
    return nnx.merge(graphdef, state)(images)


class InceptionFeatureExtractor:
    """Runs :class:`InceptionV3` over images in fixed-size batches (one compilation per image size).

    ``weights`` is passed to :func:`load_inception` when no ``model`` is given.
    """

    def __init__(
        self,
        model: InceptionV3 | None = None,
        *,
        weights: str | os.PathLike | None = None,
        resize: str = "tf1",
        batch_size: int = 50,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model if model is not None else load_inception(weights, resize=resize)
        self.batch_size = batch_size
        self._graphdef, self._state = nnx.split(self.model)

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("pool", "logits_unbiased", "logits") if self.model.with_logits else ("pool",)

    def _dispatch(self, batch: list[np.ndarray]) -> tuple[int, dict[str, jax.Array]]:
        n = len(batch)
        # Padding the last batch to the full size reuses the compiled function.
        batch = batch + [batch[-1]] * (self.batch_size - n)
        return n, _forward(self._graphdef, self._state, np.stack(batch))

    def _batches(self, images: Iterable[np.ndarray]) -> Iterator[list[np.ndarray]]:
        batch: list[np.ndarray] = []
        for image in images:
            image = as_rgb_uint8(image)
            # A batch holds one image size; a change of size starts a new batch.
            if batch and (len(batch) == self.batch_size or image.shape != batch[0].shape):
                yield batch
                batch = []
            batch.append(image)
        if batch:
            yield batch

    def extract(
        self,
        images: Iterable[np.ndarray] | np.ndarray,
        *,
        total: int | None = None,
        progress: bool = True,
        desc: str = "Inception features",
    ) -> dict[str, np.ndarray]:
        """Features of every image, in order: ``{'pool': [N, 2048]}`` (+ logits when available), float32.

        ``images`` is an array [N, H, W, 3] or any iterable of uint8 images (sizes may differ).
        """
        if total is None and hasattr(images, "__len__"):
            total = len(images)
        results: dict[str, list[np.ndarray]] = {name: [] for name in self.outputs}
        pending: tuple[int, dict[str, jax.Array]] | None = None

        def collect(item: tuple[int, dict[str, jax.Array]]) -> int:
            n, out = item
            for name in self.outputs:
                results[name].append(np.asarray(out[name])[:n])
            return n

        with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
            for batch in self._batches(images):
                # Dispatch the next batch before waiting on the previous one, so decoding overlaps compute.
                item = self._dispatch(batch)
                if pending is not None:
                    bar.update(collect(pending))
                pending = item
            if pending is not None:
                bar.update(collect(pending))
        if not results["pool"]:
            raise ValueError("no images to extract features from")
        return {name: np.concatenate(parts) for name, parts in results.items()}
