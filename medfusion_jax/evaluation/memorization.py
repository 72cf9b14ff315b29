"""The memorisation audit of two image folders, as a function with a typed result.

:func:`audit_folders` lists the training and generated images, extracts their Inception features
(the training side optionally cached in an ``.npz``), and runs :func:`medfusion_jax.metrics.memorization.audit`:
every generated image's nearest training images by feature cosine, confirmed by pixel SSIM.
:class:`FolderAudit` keeps the files with the scores, and writes ``report.json`` (every generated image's
match) and ``closest_pairs.png`` (the closest pairs side by side).

Two folders of NIfTI volumes (as ``eval.sample`` writes them for a 3-D model) are audited the same way.
No 3-D feature network's weights ship in a package, so a volume's feature is the concatenation of the
Inception pool features of its axial, coronal and sagittal mid-slices
(:func:`~medfusion_jax.evaluation.feature_sets.volume_slices`, the slices FID scores volumes by), a
[N, 3 x 2048] feature: a near neighbour must then look alike in all three planes. The confirmation is
the 3-D SSIM of the volumes. The training-feature cache holds the slice features [3 N, 2048] with their
labels and planes, the layout :meth:`~medfusion_jax.evaluation.feature_sets.FeatureSet.save` writes for a
volume folder (so ``eval.fid --save-stats`` of the training folder serves as the cache too).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medfusion_jax.evaluation.feature_sets import load_feature_set, slice_features, slice_planes
from medfusion_jax.evaluation.features import InceptionFeatureExtractor
from medfusion_jax.images import (
    PLANES,
    ImageFile,
    ImageFilesError,
    holds_volumes,
    iter_images,
    list_image_files,
    list_volume_files,
    load_rgb,
    load_volume,
)
from medfusion_jax.metrics.memorization import MemorizationReport, audit, pairs_picture

REPORT_JSON = "report.json"
PAIRS_PNG = "closest_pairs.png"


@dataclasses.dataclass
class FolderAudit:
    """The audit of ``generated`` against ``train``: the files in order and the per-image candidates."""

    train: Path
    generated: Path
    train_files: list[ImageFile]
    generated_files: list[ImageFile]
    report: MemorizationReport
    k: int
    volumes: bool = False  # folders of NIfTI volumes rather than images

    def _load(self, path: Path) -> np.ndarray:
        return load_volume(path) if self.volumes else load_rgb(path)

    def load_train(self, j: int) -> np.ndarray:
        return self._load(self.train_files[j].path)

    def load_generated(self, g: int) -> np.ndarray:
        return self._load(self.generated_files[g].path)

    def summary(self, ssim_threshold: float, cosine_threshold: float | None) -> dict[str, Any]:
        """The ``report.json`` payload: thresholds, the near-copy fraction, every generated image's match."""
        flagged = self.report.near_copies(ssim_threshold, cosine_threshold)
        train_idx, cos, sim = self.report.match_scores()
        return {
            "train": str(self.train), "generated": str(self.generated), "k": self.k,
            "ssim_threshold": ssim_threshold, "cosine_threshold": cosine_threshold,
            "n_generated": len(self.generated_files), "n_train": len(self.train_files),
            "fraction_near_copies": self.report.fraction_above(ssim_threshold, cosine_threshold),
            "n_near_copies": int(flagged.sum()),
            "matches": [
                {"generated": str(self.generated_files[g].path),
                 "train": str(self.train_files[int(train_idx[g])].path),
                 "cosine": float(cos[g]), "ssim": float(sim[g]), "near_copy": bool(flagged[g])}
                for g in range(len(self.generated_files))
            ],
        }

    def write(self, out: str | Path, *, ssim_threshold: float, cosine_threshold: float | None,
              top: int) -> dict[str, Any]:
        """Write ``report.json`` and ``closest_pairs.png`` (the ``top`` closest pairs) to ``out``; returns
        the summary."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        load_train = functools.lru_cache(maxsize=4096)(self.load_train)
        pairs_picture(self.report.closest_pairs(top), self.load_generated, load_train).save(out / PAIRS_PNG)
        summary = self.summary(ssim_threshold, cosine_threshold)
        (out / REPORT_JSON).write_text(json.dumps(summary, indent=2))
        return summary


def volume_slice_features(extractor: InceptionFeatureExtractor, files: list[ImageFile], *, progress: bool = True,
                          desc: str = "volumes") -> np.ndarray:
    """[3 N, 2048]: the pool features of every volume's mid-slices (:func:`slice_features`), volume by volume,
    plane by plane (the rows of a volume folder's :class:`~medfusion_jax.evaluation.feature_sets.FeatureSet`);
    ``reshape(N, -1)`` gives the audit's [N, 3 * 2048] features."""
    return slice_features(extractor, (load_volume(f.path) for f in files), len(files), progress=progress, desc=desc)


def _read_cache(cache: Path, train: Path, train_files: list[ImageFile], volumes: bool) -> np.ndarray:
    """The cached training features ([N, 2048], or [N, 3 * 2048] for volumes), refused if they are not those of
    ``train_files``."""
    feature_set = load_feature_set(cache)
    features, n = feature_set.features, len(train_files)
    if volumes:
        expected = slice_planes(n)
        if (features is None or feature_set.planes is None or len(features) != len(expected)
                or list(feature_set.planes) != list(expected)):
            raise ValueError(f"{cache} does not hold the mid-slice features of the {n} volumes of {train}: "
                             "delete it to recompute")
        return features.reshape(n, -1)
    if features is None or feature_set.planes is not None or len(features) != n:
        raise ValueError(f"{cache} does not hold features of the {n} images of {train}: delete it to recompute")
    return features


def audit_folders(
    train: str | Path,
    generated: str | Path,
    *,
    extractor: InceptionFeatureExtractor,
    k: int = 5,
    train_features_cache: str | Path | None = None,
    progress: bool = True,
) -> FolderAudit:
    """Audit the images of ``generated`` against those of ``train`` (both read like ``ImageFolder``), or the
    NIfTI volumes of two volume folders (module docstring).

    ``train_features_cache``: an ``.npz`` of the training features, read if it exists (and refused if it
    does not hold one row per training image, or the three mid-slice rows per training volume), else
    written.
    """
    train, generated = Path(train), Path(generated)
    train_volumes, generated_volumes = holds_volumes(train), holds_volumes(generated)
    volumes = train_volumes or generated_volumes
    if train.is_dir() and generated.is_dir() and train_volumes != generated_volumes:
        kinds = {True: "volumes", False: "images"}
        raise ImageFilesError(f"{train} holds {kinds[train_volumes]} but {generated} holds "
                              f"{kinds[generated_volumes]}: audit images against images, volumes against volumes")
    list_files, kind = (list_volume_files, "volumes") if volumes else (list_image_files, "images")
    train_files = list_files(train)
    gen_files = list_files(generated)

    def features(files: list[ImageFile], desc: str) -> np.ndarray:
        if volumes:
            return volume_slice_features(extractor, files, progress=progress, desc=desc)
        return extractor.extract(iter_images(files), total=len(files), progress=progress, desc=desc)["pool"]

    cache = Path(train_features_cache) if train_features_cache else None
    if cache is not None and cache.is_file():
        train_features = _read_cache(cache, train, train_files, volumes)
    else:
        train_features = features(train_files, f"training {kind}")
        if cache is not None:
            labels = np.array([f.label for f in train_files], dtype=str)
            extra = {}
            if volumes:
                labels, extra = np.repeat(labels, len(PLANES)), {"planes": slice_planes(len(train_files)).astype(str)}
            np.savez(cache, features=train_features, labels=labels, **extra)
        train_features = train_features.reshape(len(train_files), -1)
    gen_features = features(gen_files, f"generated {kind}").reshape(len(gen_files), -1)
    load = load_volume if volumes else load_rgb
    # Candidates repeat across generated items: keep recent training items decoded (fewer volumes: larger).
    load_train = functools.lru_cache(maxsize=64 if volumes else 4096)(lambda j: load(train_files[j].path))
    report = audit(gen_features, train_features, lambda g: load(gen_files[g].path), load_train, k=k,
                   progress=lambda it: tqdm(it, desc="SSIM of candidates", disable=not progress))
    return FolderAudit(train, generated, train_files, gen_files, report, k, volumes)
