"""A side of an FID comparison: Inception features of an image folder, or a saved statistics file.

Saved files (``.npz``) come in three kinds, all accepted by :func:`load_feature_set`:

- ours (:meth:`FeatureSet.save`): ``features`` [N, 2048] float32 and ``labels`` (class names) —
  enough for FID, precision/recall and per-class results — and, for volumes, ``planes``;
- ``num``/``sum``/``outer_sum`` (:meth:`~medfusion_jax.metrics.fid.FeatureStats.save`): FID only;
- pytorch-fid's ``mu``/``sigma``: FID only.

Volumes (a folder of NIfTI files, or a 3-D data set) are scored on 2-D slices: no 3-D feature network's
weights ship in a package, so each volume gives its slices in the three orthogonal planes (by default
one each, through the centre: :func:`medfusion_jax.images.plane_slices`) to the FID Inception, every
slice labelled with its volume's class and its plane (:attr:`FeatureSet.planes`). Scores over such a
set compare the three planes' slices pooled; :meth:`FeatureSet.in_plane` gives one plane's.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterable
from pathlib import Path

import jax
import numpy as np

from medfusion_jax.data import DATASETS, get_info
from medfusion_jax.evaluation.dataset_images import DatasetImages
from medfusion_jax.images import (
    MID,
    PLANES,
    ImageFilesError,
    holds_volumes,
    iter_images,
    list_image_files,
    list_volume_files,
    load_volume,
    plane_slices,
)
from medfusion_jax.mesh import gather_rows, process_block
from medfusion_jax.metrics.fid import FeatureStats

#: Width of the Inception pool features.
POOL_FEATURES = 2048


@dataclasses.dataclass
class FeatureSet:
    """Features (when known) and the Gaussian statistics of one side."""

    mean: np.ndarray
    cov: np.ndarray
    num: int
    features: np.ndarray | None = None
    labels: np.ndarray | None = None  # class name per sample ('' without class folders)
    source: str = ""
    planes: np.ndarray | None = None  # volumes: the plane of each slice (medfusion_jax.images.PLANES)

    @classmethod
    def from_features(cls, features: np.ndarray, labels: np.ndarray | None = None, source: str = "",
                      planes: np.ndarray | None = None) -> "FeatureSet":
        stats = FeatureStats.from_features(features)
        if labels is None:
            labels = np.full(len(features), "", dtype=object)
        return cls(stats.mean, stats.cov, stats.num, np.asarray(features, np.float32), np.asarray(labels), source,
                   None if planes is None else np.asarray(planes, dtype=object))

    def in_plane(self, plane: str) -> "FeatureSet":
        """The slices of one plane of a volume set."""
        if self.planes is None or self.features is None:
            raise ValueError(f"{self.source or 'this feature set'} holds no volume slices")
        mask = self.planes == plane
        return FeatureSet.from_features(self.features[mask], self.labels[mask], f"{self.source}[{plane}]",
                                        self.planes[mask])

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels.tolist())) if self.labels is not None else []

    def subset(self, label: str) -> "FeatureSet":
        if self.features is None or self.labels is None:
            raise ValueError(f"{self.source or 'this feature set'} has no per-sample features")
        mask = self.labels == label
        return FeatureSet.from_features(self.features[mask], self.labels[mask], f"{self.source}[{label}]",
                                        None if self.planes is None else self.planes[mask])

    def save(self, path: str | os.PathLike) -> None:
        """Features, labels (and planes) as ``.npz`` (the statistics are recomputed from them on load)."""
        if self.features is None:
            raise ValueError("only a feature set with per-sample features can be saved")
        extra = {} if self.planes is None else {"planes": np.asarray(self.planes, dtype=str)}
        np.savez(path, features=self.features, labels=np.asarray(self.labels, dtype=str), **extra)


def load_feature_set(path: str | os.PathLike) -> FeatureSet:
    """Read a saved feature or statistics file (any of the three kinds of the module docstring)."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read statistics file {path}: {err}") from err
    with data:
        keys = set(data.files)
        if "features" in keys:
            labels = data["labels"].astype(object) if "labels" in keys else None
            planes = data["planes"].astype(object) if "planes" in keys else None
            return FeatureSet.from_features(data["features"], labels, str(path), planes)
        if {"num", "sum", "outer_sum"} <= keys:
            stats = FeatureStats.load(path)
            return FeatureSet(stats.mean, stats.cov, stats.num, source=str(path))
        if {"mu", "sigma"} <= keys:
            return FeatureSet(data["mu"].astype(np.float64), data["sigma"].astype(np.float64), -1, source=str(path))
    raise ValueError(f"{path} is not a statistics file: expected 'features', 'num/sum/outer_sum' or 'mu/sigma'")


def _extract_share(extractor, images, count: int, *, progress: bool, desc: str) -> np.ndarray:
    """Pool features of this process's ``count`` images ([0, 2048] when it has none)."""
    if count == 0:
        return np.zeros((0, POOL_FEATURES), np.float32)
    return extractor.extract(images, total=count, progress=progress, desc=desc)["pool"]


def volume_slices(volume: np.ndarray, positions: tuple[float, ...] = MID) -> list[np.ndarray]:
    """The 2-D slices of one volume ``[D, H, W, C]`` that stand for it: plane by plane (:data:`PLANES`),
    position by position."""
    return [s for plane in PLANES for s in plane_slices(np.asarray(volume)[None], plane, positions)]


def slice_planes(count: int, positions: tuple[float, ...] = MID) -> np.ndarray:
    """The plane of each slice of ``count`` volumes cut by :func:`volume_slices`."""
    return np.array(list(np.repeat(PLANES, len(positions))) * count, dtype=object)


def slice_features(extractor, volumes: Iterable[np.ndarray], count: int, *, positions: tuple[float, ...] = MID,
                   progress: bool = True, desc: str = "volume slices") -> np.ndarray:
    """Pool features ``[count * 3 * len(positions), 2048]`` of the slices of ``count`` volumes, in the order
    of :func:`volume_slices` volume by volume (the rows :func:`slice_planes` labels).

    The slices go to the extractor slice kind by slice kind within chunks of ``batch_size`` volumes: the
    planes of a volume that is not a cube differ in size, and the extractor starts a new batch at every
    change of size (volume by volume, such volumes would make batches of one)."""
    per_volume = len(PLANES) * len(positions)
    if count == 0:
        return np.zeros((0, POOL_FEATURES), np.float32)
    chunks: list[int] = []

    def slices():
        remaining = iter(volumes)
        while cut := [volume_slices(v, positions) for v in itertools.islice(remaining, extractor.batch_size)]:
            chunks.append(len(cut))
            for j in range(per_volume):
                yield from (s[j] for s in cut)

    pool = extractor.extract(slices(), total=count * per_volume, progress=progress, desc=desc)["pool"]
    out, start = [], 0
    for n in chunks:  # each chunk is slice-kind-major: [per_volume, n] -> volume-major [n, per_volume]
        out.append(pool[start:start + n * per_volume].reshape(per_volume, n, -1).transpose(1, 0, 2))
        start += n * per_volume
    return np.concatenate(out).reshape(-1, pool.shape[1])


def volume_feature_set(volumes, labels, extractor, *, positions: tuple[float, ...] = MID, source: str = "",
                       progress: bool = True, desc: str = "volume slices") -> FeatureSet:
    """Inception features of the slices of ``volumes`` (uint8 ``[D, H, W, C]`` each, an array or a list),
    labelled with their volume's class name (``labels``) and plane."""
    per_volume = len(PLANES) * len(positions)
    pool = slice_features(extractor, volumes, len(labels), positions=positions, progress=progress, desc=desc)
    return FeatureSet.from_features(pool, np.repeat(np.asarray(labels, dtype=object), per_volume), source,
                                    slice_planes(len(labels), positions))


def folder_feature_set(folder: str | os.PathLike, extractor, *, progress: bool = True,
                       positions: tuple[float, ...] = MID) -> FeatureSet:
    """Inception features of every image of ``folder`` (class sub-folders allowed), or of the slices of
    every volume of a folder of NIfTI files (module docstring; ``positions`` of the slices).

    In a multi-process job each process extracts a contiguous share of the files and the features are
    gathered once: every process gets the one-process feature set."""
    volumes = holds_volumes(folder)
    files = list_volume_files(folder) if volumes else list_image_files(folder)
    start, stop = process_block(len(files))
    show = progress and jax.process_index() == 0
    if volumes:
        per_volume = len(PLANES) * len(positions)
        local = slice_features(extractor, (load_volume(f.path) for f in files[start:stop]), stop - start,
                               positions=positions, progress=show, desc=str(folder))
        return FeatureSet.from_features(gather_rows(local), np.repeat([f.label for f in files], per_volume),
                                        str(folder), slice_planes(len(files), positions))
    local = _extract_share(extractor, iter_images(files[start:stop]), stop - start, desc=str(folder), progress=show)
    pool = gather_rows(local)
    return FeatureSet.from_features(pool, np.array([f.label for f in files], dtype=object), str(folder))


def dataset_feature_set(name: str, extractor, *, data_dir: str | None = None, split: str = "train",
                        image_size: int | None = None, num_examples: int | None = None,
                        progress: bool = True, positions: tuple[float, ...] = MID) -> FeatureSet:
    """Inception features of a registered dataset (``medfusion_jax.data``), labelled by class name.

    Images come as the training pipeline prepares them (resize/crop of the dataset), in 3 channels;
    volumes as the slices of the module docstring. Unreadable images are skipped, as in training, and
    reported.
    """
    volumes = get_info(name).spatial_dims == 3
    images = DatasetImages(name, data_dir=data_dir, split=split, image_size=image_size,
                           channels=get_info(name).channels if volumes else 3, num_examples=num_examples)
    images.start, images.stop = process_block(images.total)  # this process's share (all of it for one)
    per_item = len(PLANES) * len(positions) if volumes else 1
    show = progress and jax.process_index() == 0
    if volumes:
        local = slice_features(extractor, iter(images), len(images), positions=positions, progress=show, desc=name)
    else:
        local = _extract_share(extractor, iter(images), len(images), desc=name, progress=show)
    class_names = list(images.source.class_names)
    pool = gather_rows(local)
    labels = gather_rows(np.asarray([class_names.index(c) for c in images.labels], np.int32))
    skipped = int(gather_rows(np.asarray([len(images.skipped)], np.int32)).sum())
    if skipped and jax.process_index() == 0:
        note = images.skipped_note() or f"skipped {skipped} unreadable images of {name}"
        print(note if skipped == len(images.skipped) else f"{note} ({skipped} over all processes)")
    return FeatureSet.from_features(pool, np.repeat([class_names[i] for i in labels], per_item).astype(object),
                                    f"{name}:{split}", slice_planes(len(labels), positions) if volumes else None)


def resolve_feature_set(source: str | os.PathLike, extractor_factory, *, data_dir: str | None = None,
                        split: str = "train", image_size: int | None = None, num_examples: int | None = None,
                        progress: bool = True) -> FeatureSet:
    """A folder of images, a saved ``.npz`` file, or a dataset name of ``medfusion_jax.data.DATASETS``.

    Features of folders and datasets are extracted with ``extractor_factory()``.
    """
    path = Path(source)
    if path.is_dir():
        return folder_feature_set(path, extractor_factory(), progress=progress)
    if path.is_file():
        return load_feature_set(path)
    if str(source) in DATASETS:
        return dataset_feature_set(str(source), extractor_factory(), data_dir=data_dir, split=split,
                                   image_size=image_size, num_examples=num_examples, progress=progress)
    raise ImageFilesError(
        f"{source} is neither an image folder, a statistics file, nor a dataset name "
        f"({', '.join(sorted(DATASETS))})"
    )
