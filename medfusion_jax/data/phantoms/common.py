"""Shared machinery of the procedural phantoms: seeding, coordinates, shapes, noise, the source.

Geometry is written in normalised image coordinates (``x``, ``y`` in [-1, 1] across the image,
``y`` pointing down), so one phantom description renders at any size; edges are smoothed over one
pixel, which anti-aliases them at every resolution.

Determinism: item ``i`` of split ``s`` with seed ``k`` is drawn from
``numpy.random.default_rng([k, SPLIT_CODES[s], i])`` only, so it is the same in any process, in any
order and at any image size (the size changes the rendering, not the drawn parameters).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from medfusion_jax.data.source import ImageSource

if TYPE_CHECKING:
    from medfusion_jax.data.registry import DatasetInfo

#: Splits of every phantom data set; each draws from its own random stream.
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
#: Items per split when the caller does not choose (any number works).
DEFAULT_NUM_EXAMPLES = {"train": 10_000, "validation": 1_000, "test": 1_000}

#: ``render(rng, label, size) -> float32 [size, size, 3] in [0, 1]``
Renderer = Callable[[np.random.Generator, int, int], np.ndarray]


def rng_for(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLIT_CODES[split], int(index)])


@functools.lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates ``(y, x)``, each ``[size, size]`` in (-1, 1)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    y, x = np.meshgrid(c, c, indexing="ij")
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x


def smoothstep_edge(signed_distance: np.ndarray, size: int) -> np.ndarray:
    """1 inside (distance < 0), 0 outside, linear over one pixel (2 / size) across the edge."""
    pixel = 2.0 / size
    return np.clip(0.5 - signed_distance / pixel, 0.0, 1.0)


def ellipse(
    size: int, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0
) -> np.ndarray:
    """Anti-aliased filled ellipse (radii in normalised units, angle in radians)."""
    y, x = grid(size)
    dx, dy = x - cx, y - cy
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    rho = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
    # (rho - 1) * min radius approximates the Euclidean distance near the boundary.
    return smoothstep_edge((rho - 1.0) * min(rx, ry), size)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std noise with about ``cells`` blobs across the image (resolution-free).

    The draw does not depend on ``size``; cubic upsampling to at most 64 pixels followed by a
    bilinear one keeps large images cheap.
    """
    coarse = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    mid = min(size, 64)
    field = ndimage.zoom(coarse, mid / cells, order=3, mode="reflect", grid_mode=True)
    if mid != size:
        field = ndimage.zoom(field, size / mid, order=1, mode="nearest", grid_mode=True)
    off = (field.shape[0] - size) // 2
    field = field[off : off + size, off : off + size]
    return (field - field.mean()) / (field.std() + 1e-6)


def gaussian_noise(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def splat(size: int, xs: np.ndarray, ys: np.ndarray, weights: np.ndarray | float = 1.0) -> np.ndarray:
    """Bilinear splat of points (normalised coordinates) onto a ``[size, size]`` canvas."""
    canvas = np.zeros((size + 2, size + 2), np.float32)
    px = (np.asarray(xs) + 1.0) * (size / 2.0) - 0.5 + 1.0
    py = (np.asarray(ys) + 1.0) * (size / 2.0) - 0.5 + 1.0
    w = np.broadcast_to(np.asarray(weights, np.float32), px.shape)
    keep = (px >= 0) & (px < size + 1) & (py >= 0) & (py < size + 1)
    px, py, w = px[keep], py[keep], w[keep]
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            np.add.at(canvas, (np.minimum(y0 + dy, size + 1), np.minimum(x0 + dx, size + 1)), w * wx * wy)
    return canvas[1:-1, 1:-1]


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of values in [0, 1]: the histogram bin centre that maximises the between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def as_float(image: np.ndarray) -> np.ndarray:
    """Any ``uint8``/float image ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` -> float32 ``[H, W, 3]`` in [0, 1].

    Float input is taken as [0, 1] if its range fits, else as [-1, 1] (model outputs).
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    else:
        out = arr.astype(np.float32)
        if out.min() < -1e-3:
            out = (out + 1.0) / 2.0
        out = np.clip(out, 0.0, 1.0)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return out


class PhantomSource(ImageSource):
    """A built-in data set: item ``i`` is rendered from ``(seed, split, i)``; label ``i % 2``.

    The alternating label keeps both classes exactly balanced in every prefix of the data set.
    """

    def __init__(
        self,
        info: DatasetInfo,
        render: Renderer,
        *,
        split: str = "train",
        image_size: int,
        channels: int,
        num_examples: int | None = None,
        seed: int = 0,
    ):
        if split not in SPLIT_CODES:
            raise ValueError(f"{info.name}: unknown split {split!r}; use one of {sorted(SPLIT_CODES)}")
        super().__init__(info, split=split, image_size=image_size, channels=channels)
        self.render = render
        self.num_examples = int(num_examples if num_examples is not None else DEFAULT_NUM_EXAMPLES[split])
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_examples

    def label(self, index: int) -> int:
        return index % len(self.class_names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"{self.info.name}: index {index} out of range [0, {self.num_examples})")
        label = self.label(index)
        image = to_uint8(self.render(rng_for(self.seed, self.split, index), label, self.image_size))
        if image.shape[-1] == 1:  # single-channel renderers (volumes): replicated if 3 channels are asked
            image = np.repeat(image, self.channels, axis=-1)
        elif self.channels == 1:
            # The gray phantom has three equal channels; RGB phantoms use ITU-R 601 luma like PIL.
            image = np.round(image.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))
            image = image.astype(np.uint8)[:, :, None]
        return {"image": image, "label": label}

    @property
    def labels(self) -> np.ndarray:
        return np.arange(self.num_examples, dtype=np.int32) % len(self.class_names)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts, strict=True)}

    def describe_item(self, index: int) -> str:
        return f"{self.info.name}/{self.split}[{index}] (seed {self.seed})"
