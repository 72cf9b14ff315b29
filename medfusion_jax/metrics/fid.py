"""Fréchet Inception Distance exactly as TorchMetrics' ``FrechetInceptionDistance`` computes it.

- Statistics are accumulated in float64 (sum of features and sum of outer products), then
  ``mu = sum / n`` and ``sigma = (sum_outer - n mu mu^T) / (n - 1)``.
- ``FID = |mu_r - mu_f|^2 + Tr(sigma_r) + Tr(sigma_f) - 2 Tr(sqrtm(sigma_r sigma_f))``.

The trace of the matrix root is the sum of the square roots of the eigenvalues of
``sigma_r sigma_f``. :func:`trace_sqrt_product` gets them from symmetric eigendecompositions
(real by construction, stable for singular covariances of fewer samples than dimensions, and much
faster than scipy's ``sqrtm``, the route of TorchMetrics 0.11, which agrees to float64 rounding).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import scipy.linalg


@dataclasses.dataclass
class FeatureStats:
    """Running float64 sums of features, as TorchMetrics keeps them."""

    dim: int
    num: int = 0
    sum: np.ndarray | None = None
    outer_sum: np.ndarray | None = None

    def __post_init__(self):
        if self.sum is None:
            self.sum = np.zeros(self.dim, np.float64)
        if self.outer_sum is None:
            self.outer_sum = np.zeros((self.dim, self.dim), np.float64)

    @classmethod
    def from_features(cls, features: np.ndarray) -> "FeatureStats":
        stats = cls(dim=np.shape(features)[-1])
        stats.update(features)
        return stats

    def update(self, features: np.ndarray) -> None:
        """Add a batch of features [N, dim]."""
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"expected features [N, {self.dim}], got shape {f.shape}")
        self.num += f.shape[0]
        self.sum += f.sum(axis=0)
        self.outer_sum += f.T @ f

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.num

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (denominator N - 1)."""
        if self.num < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.num}")
        mu = self.mean
        return (self.outer_sum - self.num * np.outer(mu, mu)) / (self.num - 1)

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, num=np.int64(self.num), sum=self.sum, outer_sum=self.outer_sum)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        with np.load(Path(path)) as data:
            missing = {"num", "sum", "outer_sum"} - set(data.files)
            if missing:
                raise ValueError(f"{path} is not a feature statistics file (missing {sorted(missing)})")
            return cls(dim=data["sum"].shape[0], num=int(data["num"]), sum=data["sum"], outer_sum=data["outer_sum"])


def _rank_tolerance(trace: float, dim: int) -> float:
    """Eigenvalues below this are round-off of exact zeros (the numerical-rank rule of
    ``numpy.linalg.matrix_rank``, with the trace as a cheap upper bound of the largest eigenvalue).

    A covariance of fewer samples than dimensions is singular; its zero eigenvalues come out as
    round-off of either sign, and their square roots (~1e-7 each) would add up over thousands of
    them. Dropping them makes the FID of a set with itself 0.
    """
    return max(trace, 0.0) * dim * np.finfo(np.float64).eps


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr(sqrtm(sigma1 @ sigma2))`` for symmetric PSD covariances, in float64.

    With ``sigma1 = B B^T`` (``B = V sqrt(w)`` over its non-zero eigenpairs), the non-zero
    eigenvalues of ``sigma1 sigma2`` are those of the small symmetric ``B^T sigma2 B`` (r x r,
    r = rank of ``sigma1``): cheap for few samples, and real and non-negative by construction.
    """
    s1 = np.asarray(sigma1, np.float64)
    s2 = np.asarray(sigma2, np.float64)
    # LAPACK's MRRR driver computes only the eigenpairs above the tolerance.
    w, v = scipy.linalg.eigh(
        s1, driver="evr", subset_by_value=(_rank_tolerance(float(np.trace(s1)), s1.shape[0]), np.inf)
    )
    if w.size == 0:
        return 0.0
    b = v * np.sqrt(w)
    m = b.T @ s2 @ b
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    eig = eig[eig > _rank_tolerance(float(np.sum(np.abs(eig))), eig.shape[0])]
    return float(np.sqrt(eig).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def fid_from_stats(real: FeatureStats, fake: FeatureStats) -> float:
    """FID between two accumulated statistics (TorchMetrics needs at least 2 samples on each side)."""
    if real.dim != fake.dim:
        raise ValueError(f"feature dimensions differ: {real.dim} vs {fake.dim}")
    return frechet_distance(real.mean, real.cov, fake.mean, fake.cov)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets [N, dim]."""
    return fid_from_stats(FeatureStats.from_features(real), FeatureStats.from_features(fake))
