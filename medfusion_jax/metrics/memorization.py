"""Memorisation audit: does a generated image nearly copy a training image?

Generated data is meant to be shared instead of patients' images; a near-copy of a training image
defeats that purpose. For every generated image:

1. candidates: its ``k`` nearest training images by cosine similarity of Inception pool features
   (computed in blocks, so large training sets fit in memory);
2. confirmation: the pixel-space SSIM (single scale, 11x11 Gaussian, images in [0, 1], data range 1;
   the training image is resized to the generated image's size with PIL bilinear if they differ)
   between the generated image and each candidate;
3. its match is the candidate with the highest SSIM.

A generated image counts as a near-copy when its match's SSIM is at least ``ssim_threshold``
(default 0.9: a heuristic, not an established standard; inspect the pairs picture) and, if given,
its cosine similarity at least ``cosine_threshold``.

Volumes (the loaders return uint8 [D, H, W, C]) go through the same steps: the features are whatever
the caller gives (:func:`medfusion_jax.evaluation.memorization.audit_folders` concatenates the Inception
features of a volume's three orthogonal mid-slices), the confirmation is the 3-D SSIM (11x11x11
Gaussian window, :func:`medfusion_jax.metrics.msssim.ssim`), and a training volume of another size is
resized to the generated one's trilinearly (``scipy.ndimage.zoom``, order 1, ``grid_mode``: the data
pipeline's volume resize, as the images' bilinear resize is PIL's). A pair whose channel counts differ,
or an image paired with a volume, is refused (``ValueError``). The pairs picture shows a volume by its
axial, coronal and sagittal mid-slices (:func:`medfusion_jax.images.orthogonal_mid_slices`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medfusion_jax.images import orthogonal_mid_slices
from medfusion_jax.metrics.msssim import ssim

ImageLoader = Callable[[int], np.ndarray]


@functools.partial(jax.jit, static_argnames="k")
def _top_k_cosine(gb: jax.Array, train: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    sims = jnp.matmul(gb, train.T, precision=jax.lax.Precision.HIGHEST)
    return jax.lax.top_k(sims, k)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_by_cosine(
    generated: np.ndarray, train: np.ndarray, k: int = 5, *, block_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities [G, k] (descending) and indices [G, k] of each generated row's nearest train rows."""
    generated, train = np.asarray(generated), np.asarray(train)
    if generated.ndim != 2 or train.ndim != 2 or generated.shape[1] != train.shape[1]:
        raise ValueError(f"expected features [N, dim] with the same dim, got {generated.shape} and {train.shape}")
    k = min(k, train.shape[0])
    g = _unit_rows(generated)
    t = jnp.asarray(_unit_rows(train))
    block_size = min(block_size, g.shape[0])
    sims, idx = [], []
    for start in range(0, g.shape[0], block_size):
        block = g[start : start + block_size]
        n = block.shape[0]
        # The last block is padded to the full size so the jitted function compiles once.
        padded = np.concatenate([block, np.zeros((block_size - n, g.shape[1]), np.float32)])
        s, i = _top_k_cosine(padded, t, k)
        sims.append(np.asarray(s)[:n])
        idx.append(np.asarray(i)[:n])
    return np.concatenate(sims), np.concatenate(idx)


def resize_volume(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resize of a uint8 [D, H, W, C] volume to ``shape`` (D, H, W), rounded back to uint8."""
    factors = [n / m for n, m in zip(shape, volume.shape[:3], strict=True)] + [1.0]
    out = ndimage.zoom(volume.astype(np.float32), factors, order=1, mode="nearest", grid_mode=True)
    out = out[: shape[0], : shape[1], : shape[2]]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def pixel_ssim(generated: np.ndarray, train: np.ndarray) -> float:
    """SSIM of two uint8 [H, W, 3] images, or [D, H, W, C] volumes, in [0, 1] (data range 1); ``train`` is
    resized to ``generated`` (images bilinearly with PIL, volumes trilinearly: module docstring)."""
    generated, train = np.asarray(generated), np.asarray(train)
    if generated.ndim != train.ndim or generated.ndim not in (3, 4) or generated.shape[-1] != train.shape[-1]:
        raise ValueError(f"cannot compare a generated item of shape {generated.shape} with a training item of "
                         f"shape {train.shape}: expected two images [H, W, C] or two volumes [D, H, W, C] with "
                         "the same channels")
    if train.shape != generated.shape:
        if generated.ndim == 4:
            train = resize_volume(train, generated.shape[:3])
        else:
            h, w = generated.shape[:2]
            train = np.asarray(Image.fromarray(train).resize((w, h), Image.BILINEAR))
    a = generated[None].astype(np.float32) / 255
    b = train[None].astype(np.float32) / 255
    return float(ssim(a, b, data_range=1.0)[0])


@dataclasses.dataclass
class MemorizationReport:
    """Candidates and their scores for every generated image (rows), best candidate first by SSIM."""

    train_index: np.ndarray  # [G, k]
    cosine: np.ndarray  # [G, k]
    ssim: np.ndarray  # [G, k]

    @property
    def match(self) -> np.ndarray:
        """Per generated image, the column of its match (highest SSIM among the candidates)."""
        return np.argmax(self.ssim, axis=1)

    def match_scores(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Train index, cosine and SSIM of each generated image's match."""
        rows = np.arange(self.ssim.shape[0])
        col = self.match
        return self.train_index[rows, col], self.cosine[rows, col], self.ssim[rows, col]

    def near_copies(self, ssim_threshold: float = 0.9, cosine_threshold: float | None = None) -> np.ndarray:
        """Boolean per generated image: its match reaches the threshold(s)."""
        _, cos, sim = self.match_scores()
        flagged = sim >= ssim_threshold
        if cosine_threshold is not None:
            flagged &= cos >= cosine_threshold
        return flagged

    def fraction_above(self, ssim_threshold: float = 0.9, cosine_threshold: float | None = None) -> float:
        return float(self.near_copies(ssim_threshold, cosine_threshold).mean())

    def closest_pairs(self, top: int = 16) -> list[tuple[int, int, float, float]]:
        """(generated index, train index, cosine, SSIM) of the ``top`` matches, highest SSIM first."""
        train_idx, cos, sim = self.match_scores()
        order = np.argsort(-sim, kind="stable")[:top]
        return [(int(g), int(train_idx[g]), float(cos[g]), float(sim[g])) for g in order]


def audit(
    generated_features: np.ndarray,
    train_features: np.ndarray,
    load_generated: ImageLoader,
    load_train: ImageLoader,
    *,
    k: int = 5,
    progress: Callable[[Sequence], Sequence] = lambda x: x,
) -> MemorizationReport:
    """Nearest training images of every generated image (by features), confirmed by pixel SSIM.

    ``load_generated(i)`` / ``load_train(j)`` return uint8 [H, W, 3] images, or uint8 [D, H, W, C]
    volumes (confirmed by 3-D SSIM); ``progress`` may wrap the loop over generated images (e.g. ``tqdm``).
    """
    cosine, train_index = nearest_by_cosine(generated_features, train_features, k)
    scores = np.zeros(cosine.shape, np.float64)
    for g in progress(range(cosine.shape[0])):
        image = load_generated(g)
        for c, j in enumerate(train_index[g]):
            scores[g, c] = pixel_ssim(image, load_train(int(j)))
    return MemorizationReport(train_index=train_index, cosine=cosine, ssim=scores)


def pairs_picture(
    pairs: Sequence[tuple[int, int, float, float]],
    load_generated: ImageLoader,
    load_train: ImageLoader,
    *,
    tile: int = 128,
) -> Image.Image:
    """One row per pair: generated | training image, with the indices, cosine and SSIM written above.

    Images are drawn ``tile`` x ``tile``; volumes by their axial, coronal and sagittal mid-slices side by
    side, each ``tile`` x ``tile`` (a ``3 tile`` wide picture per volume)."""
    if not pairs:
        raise ValueError("no pairs to draw")

    def picture(item: np.ndarray) -> Image.Image:
        item = np.asarray(item)
        if item.ndim == 4:
            item = orthogonal_mid_slices(item[None])[0]
        if item.shape[-1] == 1:
            item = item[..., 0]
        return Image.fromarray(item).convert("RGB")

    label_h = 14
    width = 3 * tile if np.ndim(load_generated(pairs[0][0])) == 4 else tile  # a volume's three slices
    canvas = Image.new("RGB", (2 * width + 12, len(pairs) * (tile + label_h + 6)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (g, t, cos, sim) in enumerate(pairs):
        y = row * (tile + label_h + 6)
        draw.text((2, y), f"gen {g} / train {t}  cos {cos:.3f}  SSIM {sim:.3f}", fill="black")
        for col, item in enumerate((load_generated(g), load_train(t))):
            canvas.paste(picture(item).resize((width, tile), Image.BILINEAR), (col * (width + 12), y + label_h))
    return canvas
