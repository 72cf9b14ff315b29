"""How far apart two 1-D samples are: Wasserstein-1 distance and the two-sample Kolmogorov–Smirnov test.

Used for the phantoms' measured feature (cardiothoracic ratio, cup-to-disc ratio, lymphocyte density)
per class: conditioning accuracy only says on which side of a threshold a generated image falls; these
say whether the generated values are distributed as the real ones within the class.

- Wasserstein-1 (earth mover's distance, ``scipy.stats.wasserstein_distance``): the area between the
  two empirical CDFs, in the feature's own unit (a W1 of 0.02 in CTR means the generated values would
  have to move by 0.02 on average to match the real ones).
- KS statistic (``scipy.stats.ks_2samp``, two-sided, exact or asymptotic p-value as scipy picks): the
  largest vertical gap between the two empirical CDFs, between 0 and 1; its p-value tests "both
  samples come from one distribution".

Non-finite values (a measurement that failed) are left out and counted.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class DistributionDistance:
    wasserstein1: float
    ks_statistic: float
    ks_pvalue: float
    n_a: int
    n_b: int
    #: Non-finite values dropped from each sample.
    dropped_a: int = 0
    dropped_b: int = 0


def _finite(values) -> tuple[np.ndarray, int]:
    x = np.asarray(values, np.float64).ravel()
    keep = np.isfinite(x)
    return x[keep], int((~keep).sum())


def compare_samples(a, b) -> DistributionDistance:
    """Wasserstein-1 distance and KS statistic/p-value between samples ``a`` and ``b`` (NaN if either is empty)."""
    a, dropped_a = _finite(a)
    b, dropped_b = _finite(b)
    if a.size == 0 or b.size == 0:
        nan = float("nan")
        return DistributionDistance(nan, nan, nan, int(a.size), int(b.size), dropped_a, dropped_b)
    ks = stats.ks_2samp(a, b)
    return DistributionDistance(
        wasserstein1=float(stats.wasserstein_distance(a, b)),
        ks_statistic=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        n_a=int(a.size), n_b=int(b.size), dropped_a=dropped_a, dropped_b=dropped_b,
    )
