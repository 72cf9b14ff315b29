"""Kernel Inception Distance (Bińkowski et al., 2018) with TorchMetrics' ``KernelInceptionDistance`` semantics.

Why beside FID: FID's estimator is biased, and at a few hundred images the bias dominates (a real set
against another real set of the same distribution scores far above 0); KID's per-subset estimate is
the *unbiased* squared MMD with a cubic polynomial kernel, so two samples of one distribution score
about 0 at any size, and the spread over subsets says how much a difference is noise.

What TorchMetrics does (``torchmetrics.image.kid``, 1.x), and so this module:

- kernel ``k(x, y) = (x . y / dim + 1) ** 3`` (``degree=3``, ``gamma=None`` meaning 1/dim, ``coef=1``);
- per subset: ``subset_size`` rows drawn without replacement from the real features and, independently,
  from the fake ones (``torch.randperm(n)[:subset_size]``, real first); unbiased MMD^2 =
  ``(sum_{i!=j} k(r_i, r_j) + sum_{i!=j} k(f_i, f_j)) / (m (m - 1)) - 2 sum_{i,j} k(r_i, f_j) / m^2``;
- the result is the mean over ``subsets`` (default 100) subsets and their *population* standard
  deviation (``std(unbiased=False)``);
- ``subset_size`` defaults to 1000 and must not exceed either set. Here ``subset_size=None`` scales that
  default to the sets: ``min(1000, n_real // 2, n_fake // 2)``. Half, not all, of the smaller set: a
  subset as large as its set holds the whole set every time, and the spread over subsets would then
  show only the other side's draws.

Differences, on purpose: the arithmetic is float64 (TorchMetrics computes in the features' dtype,
float32 for its Inception; its result moves by ~1e-6 relative), and the subsets come from a NumPy
generator seeded by ``seed`` (torch's generator is not reachable without torch). ``indices`` takes
explicit subsets, which is how the tests feed TorchMetrics' own draws and compare to 1e-10.

When both sets have at most :data:`GRAM_LIMIT` rows, the three kernel matrices are computed once and
every subset sums a sub-block of them (identical values, ~100x less work at 100 subsets); above that,
each subset's kernels are computed on their own (memory stays ``subset_size^2``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: Rows per set up to which the full kernel matrices are kept (5000^2 float64 = 200 MB each).
GRAM_LIMIT = 5000
DEFAULT_SUBSETS = 100
DEFAULT_SUBSET_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class KID:
    """KID mean and (population) standard deviation over ``subsets`` subsets of ``subset_size`` rows."""

    mean: float
    std: float
    subsets: int
    subset_size: int


def poly_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                coef: float = 1.0) -> np.ndarray:
    """``(x y^T * gamma + coef) ** degree`` in float64; ``gamma=None`` is ``1 / dim``."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef) ** degree


def _mmd_from_kernels(k_rr: np.ndarray, k_ff: np.ndarray, k_rf: np.ndarray) -> float:
    m = k_rr.shape[0]
    within = (k_rr.sum() - np.trace(k_rr)) + (k_ff.sum() - np.trace(k_ff))
    return float(within / (m * (m - 1)) - 2.0 * k_rf.sum() / m**2)


def unbiased_mmd2(real: np.ndarray, fake: np.ndarray, degree: int = 3, gamma: float | None = None,
                  coef: float = 1.0) -> float:
    """The unbiased squared MMD of two equally sized feature sets (TorchMetrics' ``poly_mmd``)."""
    real, fake = _check_pair(real, fake)
    if real.shape[0] != fake.shape[0] or real.shape[0] < 2:
        raise ValueError(f"unbiased MMD needs two sets of the same size >= 2, got {real.shape[0]} and {fake.shape[0]}")
    kern = lambda a, b: poly_kernel(a, b, degree, gamma, coef)  # noqa: E731
    return _mmd_from_kernels(kern(real, real), kern(fake, fake), kern(real, fake))


def draw_subsets(n_real: int, n_fake: int, subsets: int, subset_size: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``[subsets, subset_size]`` for each side, each row a draw without replacement."""
    rng = np.random.default_rng(seed)
    real_idx = np.empty((subsets, subset_size), np.int64)
    fake_idx = np.empty((subsets, subset_size), np.int64)
    for s in range(subsets):
        real_idx[s] = rng.permutation(n_real)[:subset_size]
        fake_idx[s] = rng.permutation(n_fake)[:subset_size]
    return real_idx, fake_idx


def _check_pair(real, fake) -> tuple[np.ndarray, np.ndarray]:
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected features [N, dim] with the same dim, got {real.shape} and {fake.shape}")
    return real, fake


def kernel_inception_distance(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    subsets: int = DEFAULT_SUBSETS,
    subset_size: int | None = None,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
    indices: tuple[np.ndarray, np.ndarray] | None = None,
) -> KID:
    """KID of ``fake`` against ``real`` features ([N, dim] each), TorchMetrics' definition.

    ``subset_size=None`` takes ``min(1000, n_real // 2, n_fake // 2)`` (at least 2); ``indices`` (real and
    fake row indices, ``[subsets, subset_size]`` each) replaces the random draw.
    """
    real, fake = _check_pair(real, fake)
    n_real, n_fake = real.shape[0], fake.shape[0]
    if indices is None:
        if subset_size is None:
            subset_size = max(2, min(DEFAULT_SUBSET_SIZE, n_real // 2, n_fake // 2))
        if subsets < 1:
            raise ValueError(f"subsets must be positive, got {subsets}")
        if not 2 <= subset_size <= min(n_real, n_fake):
            raise ValueError(f"subset_size must be between 2 and the smaller set ({min(n_real, n_fake)}), "
                             f"got {subset_size}")
        real_idx, fake_idx = draw_subsets(n_real, n_fake, subsets, subset_size, seed)
    else:
        real_idx, fake_idx = (np.asarray(i, np.int64) for i in indices)
        if real_idx.shape != fake_idx.shape or real_idx.ndim != 2 or real_idx.shape[1] < 2:
            raise ValueError(f"indices must be two [subsets, subset_size >= 2] arrays, got {real_idx.shape} "
                             f"and {fake_idx.shape}")
        if real_idx.max() >= n_real or fake_idx.max() >= n_fake or min(real_idx.min(), fake_idx.min()) < 0:
            raise ValueError("indices out of range of the feature sets")
    kern = lambda a, b: poly_kernel(a, b, degree, gamma, coef)  # noqa: E731
    if max(n_real, n_fake) <= GRAM_LIMIT:
        k_rr, k_ff, k_rf = kern(real, real), kern(fake, fake), kern(real, fake)
        scores = [_mmd_from_kernels(k_rr[np.ix_(r, r)], k_ff[np.ix_(f, f)], k_rf[np.ix_(r, f)])
                  for r, f in zip(real_idx, fake_idx, strict=True)]
    else:
        scores = [_mmd_from_kernels(kern(real[r], real[r]), kern(fake[f], fake[f]), kern(real[r], fake[f]))
                  for r, f in zip(real_idx, fake_idx, strict=True)]
    scores = np.asarray(scores)
    return KID(mean=float(scores.mean()), std=float(scores.std()), subsets=len(scores),
               subset_size=int(real_idx.shape[1]))
