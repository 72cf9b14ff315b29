"""Conditioning accuracy: does a sample generated for class c show the sign of class c?

The built-in phantoms have a measurement function (``DatasetInfo.measure``: cardiothoracic ratio,
cup-to-disc ratio, lymphocyte density) and a threshold that decides the class, so a generated image
can be checked without a trained classifier. For each class folder of generated images (the
ImageFolder layout ``eval.sample`` writes), the accuracy is the fraction of its images whose
measurement indicates that class. An image where the measurement fails (no lungs found, say) counts
as wrong and is counted separately. Running the same function over real images of the data set gives
the ceiling the measurement itself reaches at that size.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import numpy as np

from medfusion_jax.data import DatasetInfo
from medfusion_jax.images import list_image_files, load_rgb


@dataclasses.dataclass(frozen=True)
class ClassAccuracy:
    class_name: str
    class_index: int
    num_images: int
    num_correct: int
    num_unmeasurable: int
    measurement_mean: float  # over the measurable images (NaN when none)
    measurement_std: float

    @property
    def accuracy(self) -> float:
        return self.num_correct / self.num_images if self.num_images else float("nan")


def _check_measurable(info: DatasetInfo) -> None:
    if info.measure is None or info.threshold is None or info.positive_class is None:
        raise ValueError(f"dataset {info.name!r} has no measurement function: conditioning accuracy needs one "
                         "(the built-in phantom-* data sets have one)")


def predicted_classes(info: DatasetInfo, images: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class or -1 where the measurement failed, measurement) for each image."""
    _check_measurable(info)
    measured = np.array([info.measure(image) for image in images], dtype=np.float64)
    predicted = np.where(measured > info.threshold, info.positive_class, 1 - info.positive_class)
    return np.where(np.isfinite(measured), predicted, -1), measured


def class_accuracy(info: DatasetInfo, class_index: int, images: Iterable[np.ndarray]) -> ClassAccuracy:
    predicted, measured = predicted_classes(info, images)
    finite = measured[np.isfinite(measured)]
    return ClassAccuracy(
        class_name=info.class_names[class_index],
        class_index=class_index,
        num_images=len(predicted),
        num_correct=int(np.sum(predicted == class_index)),
        num_unmeasurable=int(np.sum(predicted < 0)),
        measurement_mean=float(finite.mean()) if finite.size else float("nan"),
        measurement_std=float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
    )


def folder_accuracy(info: DatasetInfo, folder: str | os.PathLike) -> list[ClassAccuracy]:
    """Accuracy per class sub-folder of ``folder``; sub-folders are matched to ``info.class_names``."""
    files = list_image_files(folder)
    by_class: dict[str, list] = {}
    for f in files:
        by_class.setdefault(f.label, []).append(f.path)
    unknown = sorted(set(by_class) - set(info.class_names))
    if unknown:
        raise ValueError(f"{folder}: sub-folders {unknown} are not classes of {info.name} "
                         f"({', '.join(info.class_names)})")
    return [class_accuracy(info, info.class_names.index(name), (load_rgb(p) for p in paths))
            for name, paths in sorted(by_class.items(), key=lambda kv: info.class_names.index(kv[0]))]


def source_accuracy(info: DatasetInfo, source, limit: int | None = None) -> list[ClassAccuracy]:
    """Accuracy per class over the first ``limit`` items of a data source (real images)."""
    count = len(source) if limit is None else min(limit, len(source))
    items = [source[i] for i in range(count)]
    return [class_accuracy(info, c, (it["image"] for it in items if int(it["label"]) == c))
            for c in range(len(info.class_names))]


def summary(rows: list[ClassAccuracy]) -> dict:
    """JSON-ready: per class rows and the mean accuracy over classes (balanced accuracy)."""
    accuracies = [r.accuracy for r in rows if r.num_images]
    return {
        "classes": [dict(dataclasses.asdict(r), accuracy=r.accuracy) for r in rows],
        "balanced_accuracy": float(np.mean(accuracies)) if accuracies else float("nan"),
        "chance": 1.0 / len(rows) if rows else float("nan"),
    }
