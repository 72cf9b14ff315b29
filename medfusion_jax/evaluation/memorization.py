"""The memorisation audit of two image folders, as a function with a typed result.

:func:`audit_folders` lists the training and generated images, extracts their Inception features
(the training side optionally cached in an ``.npz``), and runs :func:`medfusion_jax.metrics.memorization.audit`:
every generated image's nearest training images by feature cosine, confirmed by pixel SSIM.
:class:`FolderAudit` keeps the files with the scores, and writes ``report.json`` (every generated image's
match) and ``closest_pairs.png`` (the closest pairs side by side).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medfusion_jax.evaluation.feature_sets import load_feature_set
from medfusion_jax.evaluation.features import InceptionFeatureExtractor
from medfusion_jax.images import ImageFile, iter_images, list_image_files, load_rgb
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

    def load_train(self, j: int) -> np.ndarray:
        return load_rgb(self.train_files[j].path)

    def load_generated(self, g: int) -> np.ndarray:
        return load_rgb(self.generated_files[g].path)

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


def audit_folders(
    train: str | Path,
    generated: str | Path,
    *,
    extractor: InceptionFeatureExtractor,
    k: int = 5,
    train_features_cache: str | Path | None = None,
    progress: bool = True,
) -> FolderAudit:
    """Audit the images of ``generated`` against those of ``train`` (both read like ``ImageFolder``).

    ``train_features_cache``: an ``.npz`` of the training features, read if it exists (and refused if it
    does not hold one row per training image), else written.
    """
    train, generated = Path(train), Path(generated)
    train_files = list_image_files(train)
    gen_files = list_image_files(generated)
    cache = Path(train_features_cache) if train_features_cache else None
    if cache is not None and cache.is_file():
        train_features = load_feature_set(cache).features
        if train_features is None or len(train_features) != len(train_files):
            raise ValueError(f"{cache} does not hold features of the {len(train_files)} images of {train}: "
                             "delete it to recompute")
    else:
        train_features = extractor.extract(iter_images(train_files), total=len(train_files), progress=progress,
                                           desc="training images")["pool"]
        if cache is not None:
            np.savez(cache, features=train_features, labels=np.array([f.label for f in train_files], dtype=str))
    gen_features = extractor.extract(iter_images(gen_files), total=len(gen_files), progress=progress,
                                     desc="generated images")["pool"]
    load_train = functools.lru_cache(maxsize=4096)(lambda j: load_rgb(train_files[j].path))
    report = audit(gen_features, train_features, lambda g: load_rgb(gen_files[g].path), load_train, k=k,
                   progress=lambda it: tqdm(it, desc="SSIM of candidates", disable=not progress))
    return FolderAudit(train, generated, train_files, gen_files, report, k)
