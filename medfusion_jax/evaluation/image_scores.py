"""FID, KID and improved precision/recall of an image set against the real set, as one typed row.

Every row of the demo's tables and of ``eval.fid`` is an :class:`ImageScores`: the generated set at a
checkpoint, or a reference (a second real split; the autoencoder's reconstructions), each scored
against the same real test features, so the numbers of one table are comparable.

- FID: TorchMetrics' definition (:mod:`medfusion_jax.metrics.fid`), from the sets' Gaussian statistics;
- KID: TorchMetrics' ``KernelInceptionDistance`` (:mod:`medfusion_jax.metrics.kid`), 100 subsets of
  ``min(1000, n_real, n_fake)`` images, mean ± population std; needs per-image features on both sides
  (a statistics-only ``.npz`` gives FID only: KID and precision/recall are ``None``);
- precision/recall: Medfusion's improved precision/recall on the same features, k = 3.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from medfusion_jax.evaluation.feature_sets import FeatureSet
from medfusion_jax.metrics.fid import frechet_distance
from medfusion_jax.metrics.kid import DEFAULT_SUBSETS, kernel_inception_distance
from medfusion_jax.metrics.precision_recall import precision_recall


@dataclasses.dataclass(frozen=True)
class ImageScores:
    """One set (``subset``: 'all' or a class name) scored against the real set."""

    subset: str
    n_real: int
    n_fake: int
    fid: float
    kid_mean: float | None = None
    kid_std: float | None = None
    kid_subset_size: int | None = None
    precision: float | None = None
    recall: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ImageScores":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def finite(self) -> bool:
        """Every number that was computed is finite."""
        return all(v is None or (isinstance(v, (int, float)) and math.isfinite(v))
                   for v in (self.fid, self.kid_mean, self.kid_std, self.precision, self.recall))


def score_feature_sets(real: FeatureSet, fake: FeatureSet, subset: str = "all", *, k: int = 3,
                       variant: str = "reference", with_pr: bool = True, with_kid: bool = True,
                       kid_subsets: int = DEFAULT_SUBSETS, seed: int = 0) -> ImageScores:
    """FID (always), KID and precision/recall (when both sides have per-image features) of ``fake``."""
    values: dict[str, Any] = dict(subset=subset, n_real=real.num, n_fake=fake.num,
                                  fid=frechet_distance(real.mean, real.cov, fake.mean, fake.cov))
    features = real.features is not None and fake.features is not None
    if with_kid and features and min(real.num, fake.num) >= 2:
        kid = kernel_inception_distance(real.features, fake.features, subsets=kid_subsets, seed=seed)
        values.update(kid_mean=kid.mean, kid_std=kid.std, kid_subset_size=kid.subset_size)
    if with_pr and features and min(real.num, fake.num) > k:
        pr = precision_recall(real.features, fake.features, k=k, variant=variant)
        values.update(precision=pr.precision, recall=pr.recall)
    return ImageScores(**values)


def score_per_class(real: FeatureSet, fake: FeatureSet, **kwargs) -> list[ImageScores]:
    """The row 'all', then one row per class present on both sides with at least 2 images each."""
    rows = [score_feature_sets(real, fake, "all", **kwargs)]
    for name in sorted(set(real.classes) & set(fake.classes)):
        r, f = real.subset(name), fake.subset(name)
        if min(r.num, f.num) >= 2:
            rows.append(score_feature_sets(r, f, name or "(root)", **kwargs))
    return rows
