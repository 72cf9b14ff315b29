"""The phantoms' measured feature on generated and real images: conditioning accuracy and whether the
within-class distribution was learnt.

Conditioning accuracy (the fraction of a class's images whose measurement falls on that class's side of
the threshold) only shows that a model puts the sign on the right side of the threshold; with classes
drawn from ranges that do not overlap (phantom-cxr: CTR U(0.36, 0.45) vs U(0.55, 0.66)) that is a
weak test. So per class the generated values are also compared with the real test values of the same
class: Wasserstein-1 distance (in the feature's unit) and the two-sample Kolmogorov–Smirnov statistic
(:mod:`medfusion_jax.metrics.distribution`). A second real split measured the same way gives the
distances that sampling alone produces at these sizes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from medfusion_jax.data import DatasetInfo
from medfusion_jax.evaluation.conditioning import predicted_classes
from medfusion_jax.metrics.distribution import DistributionDistance, compare_samples


@dataclasses.dataclass(frozen=True)
class ClassMeasurement:
    """The measured feature of one class's images, against the real images of that class."""

    class_name: str
    class_index: int
    num_images: int
    num_unmeasurable: int
    #: Fraction of the class's images whose measurement indicates the class (unmeasurable ones count as wrong).
    accuracy: float
    mean: float
    std: float
    #: Generated (or second real) values against the real test values of the class.
    distance: DistributionDistance

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ClassMeasurement":
        return cls(**{**values, "distance": DistributionDistance(**values["distance"])})


def measure(info: DatasetInfo, images: Iterable[np.ndarray]) -> np.ndarray:
    """The data set's measurement of every image (NaN where it fails), float64."""
    return predicted_classes(info, images)[1]


def compare_classes(info: DatasetInfo, values: np.ndarray, labels: Sequence[int], real_values: np.ndarray,
                    real_labels: Sequence[int]) -> list[ClassMeasurement]:
    """Per class (in ``info.class_names`` order, those with images): accuracy of ``values`` and their
    distance to the real values of the same class."""
    values, labels = np.asarray(values, np.float64), np.asarray(labels)
    real_values, real_labels = np.asarray(real_values, np.float64), np.asarray(real_labels)
    if values.shape != labels.shape or real_values.shape != real_labels.shape:
        raise ValueError("each measurement needs exactly one label")
    rows = []
    for c, name in enumerate(info.class_names):
        mine = values[labels == c]
        if mine.size == 0:
            continue
        finite = mine[np.isfinite(mine)]
        indicated = np.where(finite > info.threshold, info.positive_class, 1 - info.positive_class)
        rows.append(ClassMeasurement(
            class_name=name, class_index=c, num_images=int(mine.size),
            num_unmeasurable=int(mine.size - finite.size),
            accuracy=float(np.sum(indicated == c) / mine.size),
            mean=float(finite.mean()) if finite.size else float("nan"),
            std=float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
            distance=compare_samples(mine, real_values[real_labels == c]),
        ))
    return rows


def balanced_accuracy(rows: Sequence[ClassMeasurement]) -> float:
    """Mean of the per-class accuracies (chance: 1 / number of classes)."""
    return float(np.mean([r.accuracy for r in rows])) if rows else float("nan")
