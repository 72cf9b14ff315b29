"""Improved precision and recall (Kynkäänniemi et al., 2019) on feature sets, computed in blocks.

Two variants:

- ``'reference'`` — Medfusion's ``ImprovedPrecessionRecall`` (the paper's numbers): Euclidean
  distances ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0))`` in float32, the radius of a point is the largest
  of its k + 1 smallest distances to its own set (itself included, i.e. its k-th neighbour), and a
  sample is covered when its distance to some reference point is strictly ``<`` that point's radius.
- ``'original'`` — the original paper's code: squared distances and ``<=``.

precision = fraction of fake samples inside the real manifold; recall = fraction of real samples
inside the fake manifold. Distances are computed a block of rows at a time against the full other
set (``block_size`` x N floats), so 50,000 x 50,000 fits in memory on a GPU and on a laptop.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

VARIANTS = ("reference", "original")


@dataclasses.dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float


def _check_variant(variant: str) -> bool:
    """True where the variant uses squared distances."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant == "original"


@functools.partial(jax.jit, static_argnames="squared")
def _distances(xb: jax.Array, y: jax.Array, squared: bool) -> jax.Array:
    """[B, N] distances with the reference's float32 formula (row norms + column norms - 2 x.y)."""
    x_sq = jnp.sum(xb**2, axis=1, keepdims=True)
    y_sq = jnp.sum(y**2, axis=1, keepdims=True).T
    d = x_sq + y_sq - 2 * jnp.matmul(xb, y.T, precision=jax.lax.Precision.HIGHEST)
    d = jnp.maximum(d, 0.0)
    return d if squared else jnp.sqrt(d)


@functools.partial(jax.jit, static_argnames=("k", "squared"))
def _radii_block(xb: jax.Array, y: jax.Array, k: int, squared: bool) -> jax.Array:
    # The (k + 1)-th smallest distance: the k + 1 smallest include the point itself.
    return -jax.lax.top_k(-_distances(xb, y, squared), k + 1)[0][:, k]


@functools.partial(jax.jit, static_argnames=("squared", "inclusive"))
def _cross_block(fb, fake_radii_b, real, real_radii, squared: bool, inclusive: bool):
    d = _distances(fb, real, squared)
    inside = (lambda a, b: a <= b) if inclusive else (lambda a, b: a < b)
    fake_covered = jnp.any(inside(d, real_radii[None, :]), axis=1)
    real_covered = jnp.any(inside(d, fake_radii_b[:, None]), axis=0)
    return fake_covered, real_covered


def _blocks(x: np.ndarray, block_size: int):
    """Row blocks of x, the last one padded to ``block_size`` rows (one compilation); yields (block, n_valid)."""
    for start in range(0, x.shape[0], block_size):
        block = x[start : start + block_size]
        n = block.shape[0]
        if n < block_size:
            block = np.concatenate([block, np.zeros((block_size - n, x.shape[1]), x.dtype)])
        yield block, n


def knn_radii(features: np.ndarray, k: int = 3, *, variant: str = "reference", block_size: int = 1024) -> np.ndarray:
    """Radius of each point's k-nearest-neighbour ball within its own set (squared for ``'original'``)."""
    squared = _check_variant(variant)
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or x.shape[0] < k + 1:
        raise ValueError(f"need features [N, dim] with N > k = {k}, got shape {x.shape}")
    block_size = min(block_size, x.shape[0])
    y = jnp.asarray(x)
    return np.concatenate([np.asarray(_radii_block(b, y, k, squared))[:n] for b, n in _blocks(x, block_size)])


def precision_recall(
    real: np.ndarray, fake: np.ndarray, *, k: int = 3, variant: str = "reference", block_size: int = 1024
) -> PrecisionRecall:
    """Improved precision and recall of ``fake`` against ``real`` features ([N, dim] each)."""
    squared = _check_variant(variant)
    real = np.asarray(real, np.float32)
    fake = np.asarray(fake, np.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected features [N, dim] with the same dim, got {real.shape} and {fake.shape}")
    real_radii = jnp.asarray(knn_radii(real, k, variant=variant, block_size=block_size))
    fake_radii = knn_radii(fake, k, variant=variant, block_size=block_size)
    block_size = min(block_size, fake.shape[0])
    # Padded fake rows get radius -inf: they cover no real point.
    padded_radii = np.concatenate([fake_radii, np.full(-fake.shape[0] % block_size, -np.inf, np.float32)])
    real_dev = jnp.asarray(real)
    fake_covered = []
    real_covered = np.zeros(real.shape[0], bool)
    for i, (block, n) in enumerate(_blocks(fake, block_size)):
        radii_b = padded_radii[i * block_size : (i + 1) * block_size]
        f_cov, r_cov = _cross_block(block, radii_b, real_dev, real_radii, squared, squared)
        fake_covered.append(np.asarray(f_cov)[:n])
        real_covered |= np.asarray(r_cov)
    return PrecisionRecall(
        precision=float(np.concatenate(fake_covered).mean()), recall=float(real_covered.mean())
    )
