"""Volume data sets (CT, MRI): NIfTI files and DICOM series, one class per folder or labelled by a CSV.

Layouts read (``volume-folder``)::

    DATA_DIR/<class_a>/*.nii | *.nii.gz           one volume per NIfTI file
    DATA_DIR/<class_a>/<series>/*.dcm ...         one volume per folder of DICOM slices (a series)
    DATA_DIR/<class_b>/...                        classes = sub-folder names, sorted (index = position)

    DATA_DIR/labels.csv                           columns ``path,label``: ``path`` relative to DATA_DIR (a
                                                  NIfTI file or a series folder), ``label`` a class name;
                                                  classes = the sorted distinct labels

If ``DATA_DIR/<split>`` exists it is the root of that split, as for image folders.

Axes: volumes are ``[D, H, W, C]`` with D inferior -> superior, H anterior -> posterior, W right -> left
(an axial stack as a radiologist scrolls it). NIfTI data are first brought to the closest canonical
(RAS+) orientation with nibabel, then reordered to those axes; DICOM slices are ordered by their
position along the slice normal (``ImagePositionPatient`` . (row x column direction)), rows and
columns as stored. The voxel spacing (mm) comes from the NIfTI header or from ``PixelSpacing`` and
the slice positions.

Transforms (:class:`VolumeTransform`, the original's ``SimpleDataset3D``: resize, flips on every axis,
crop-or-pad, z-score or rescale): optionally resample to a voxel spacing (``spacing``), then either
resize to ``image_size``^3 (``fit="resize"``, trilinear) or centre crop / pad to it (``fit="crop-or-pad"``,
padding with the volume's minimum), then the intensity normalisation: ``"zscore"`` (the original's
default, ``ZNormalization``) or ``"rescale"`` (``RescaleIntensity((-1, 1))``, min to max). Random
flips happen in the pipeline (``--flips hvd``). Sources serve uint8, like every other data set: the
rescaled volume maps [min, max] to [0, 255]; the z-scored one maps z in [-3, 3] to [0, 255] (values
beyond 3 standard deviations are clipped; after the pipeline's [-1, 1] normalisation the network sees
z / 3). That quantisation to 8 bits is where we differ from the original, which feeds float z-scores.

Bad volumes are reported with their path and skipped (or refused with ``strict``): unreadable or
truncated NIfTI files, a series with a missing slice (a gap of about twice the spacing), inconsistent
slice spacing, slices of different sizes, slices without a position.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from medfusion_jax.data import images
from medfusion_jax.data.errors import DataError, ImageError, Problem, require_dir
from medfusion_jax.data.source import Record, RecordSource, finish_index

if TYPE_CHECKING:
    from medfusion_jax.data.registry import DatasetInfo

NIFTI_SUFFIXES = (".nii", ".nii.gz")
LABELS_CSV = "labels.csv"
#: Relative tolerance of slice gaps around the series' spacing.
SPACING_TOLERANCE = 0.1


@dataclasses.dataclass(frozen=True)
class Volume:
    """Voxel values ``[D, H, W]`` (float32, after DICOM rescale slope/intercept) and spacing (mm, D/H/W)."""

    data: np.ndarray
    spacing: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class VolumeTransform:
    """How a read volume becomes a training item (see the module docstring)."""

    spacing: tuple[float, float, float] | None = None
    fit: str = "resize"
    intensity: str = "zscore"

    def __post_init__(self):
        if self.fit not in ("resize", "crop-or-pad"):
            raise ValueError(f"fit must be 'resize' or 'crop-or-pad', got {self.fit!r}")
        if self.intensity not in ("zscore", "rescale"):
            raise ValueError(f"intensity must be 'zscore' or 'rescale', got {self.intensity!r}")


def is_nifti(path: str) -> bool:
    return path.endswith(NIFTI_SUFFIXES) and os.path.isfile(path)


# -- reading -------------------------------------------------------------------------------------------


def read_nifti_volume(path: str) -> Volume:
    import nibabel

    try:
        img = nibabel.as_closest_canonical(nibabel.load(path))
        data = np.asarray(img.dataobj, np.float32)
    except Exception as err:  # noqa: BLE001 - nibabel raises many kinds for broken files
        raise ImageError(path, f"cannot read NIfTI ({type(err).__name__}: {err})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageError(path, f"expected a 3-D volume, got array shape {data.shape}")
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    # RAS+ (x: left -> right, y: posterior -> anterior, z: inferior -> superior) -> (D, H, W).
    volume = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])
    return Volume(volume, (zooms[2], zooms[1], zooms[0]))


def dicom_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if not n.startswith(".") and images.is_dicom(os.path.join(folder, n)))


def read_dicom_series(folder: str) -> Volume:
    """The slices of one series folder, ordered by position; refuses gaps and uneven spacing."""
    import pydicom

    files = dicom_files(folder)
    if len(files) < 2:
        raise ImageError(folder, f"a DICOM series needs at least 2 slices, found {len(files)}")
    slices = []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
            pixels = images.modality_values(ds)
        except Exception as err:  # noqa: BLE001
            raise ImageError(path, f"cannot read DICOM slice ({type(err).__name__}: {err})") from None
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise ImageError(path, "slice without ImagePositionPatient/ImageOrientationPatient: cannot order it")
        orientation = np.asarray(ds.ImageOrientationPatient, np.float64)
        normal = np.cross(orientation[:3], orientation[3:])
        position = float(np.dot(np.asarray(ds.ImagePositionPatient, np.float64), normal))
        spacing = tuple(float(v) for v in getattr(ds, "PixelSpacing", (1.0, 1.0)))
        slices.append((position, path, pixels, spacing))
    slices.sort(key=lambda s: s[0])
    shapes = {s[2].shape for s in slices}
    if len(shapes) > 1:
        raise ImageError(folder, f"slices of different sizes {sorted(shapes)}")
    gaps = np.diff([s[0] for s in slices])
    step = float(np.median(gaps))
    if step <= 0:
        raise ImageError(folder, "slices share one position (duplicates?)")
    for k, gap in enumerate(gaps):
        if abs(gap - step) > SPACING_TOLERANCE * step:
            between = f"{os.path.basename(slices[k][1])} and {os.path.basename(slices[k + 1][1])}"
            missing = round(gap / step) - 1
            if missing >= 1 and abs(gap - (missing + 1) * step) <= SPACING_TOLERANCE * step:
                raise ImageError(folder, f"{missing} slice(s) missing between {between} "
                                         f"(gap {gap:.3g} mm, spacing {step:.3g} mm)")
            raise ImageError(folder, f"inconsistent slice spacing between {between} (gap {gap:.3g} mm, "
                                     f"spacing {step:.3g} mm)")
    data = np.stack([s[2] for s in slices]).astype(np.float32)
    return Volume(data, (step, *slices[0][3]))


def read_volume(path: str) -> Volume:
    return read_nifti_volume(path) if is_nifti(path) else read_dicom_series(path)


# -- transforms ----------------------------------------------------------------------------------------


def resample(volume: Volume, spacing: tuple[float, float, float]) -> Volume:
    """Trilinear resampling to the voxel ``spacing`` (mm)."""
    factors = [s / t for s, t in zip(volume.spacing, spacing, strict=True)]
    return Volume(ndimage.zoom(volume.data, factors, order=1, mode="nearest", grid_mode=True).astype(np.float32),
                  tuple(spacing))


def resize(data: np.ndarray, size: int) -> np.ndarray:
    """Trilinear resize to ``size``^3 (torchio ``Resize``)."""
    factors = [size / n for n in data.shape]
    out = ndimage.zoom(data, factors, order=1, mode="nearest", grid_mode=True)
    return out[:size, :size, :size].astype(np.float32)


def crop_or_pad(data: np.ndarray, size: int) -> np.ndarray:
    """Centre crop or pad (with the minimum) every axis to ``size`` (torchio ``CropOrPad``)."""
    out = np.full((size,) * 3, data.min(), np.float32)
    src, dst = [], []
    for n in data.shape:
        if n >= size:
            start = (n - size) // 2
            src.append(slice(start, start + size))
            dst.append(slice(0, size))
        else:
            start = (size - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[tuple(dst)] = data[tuple(src)]
    return out


def to_uint8(data: np.ndarray, intensity: str) -> np.ndarray:
    """The intensity normalisation, quantised to uint8 (see the module docstring)."""
    if intensity == "zscore":
        std = float(data.std())
        unit = (data - data.mean()) / (std if std > 0 else 1.0) / 6.0 + 0.5  # z in [-3, 3] -> [0, 1]
    else:
        lo, hi = float(data.min()), float(data.max())
        unit = (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)
    return np.clip(np.round(unit * 255.0), 0, 255).astype(np.uint8)


def transform(volume: Volume, size: int, options: VolumeTransform, channels: int = 1) -> np.ndarray:
    """A read volume -> uint8 ``[size, size, size, channels]``."""
    if options.spacing is not None:
        volume = resample(volume, options.spacing)
    data = resize(volume.data, size) if options.fit == "resize" else crop_or_pad(volume.data, size)
    out = to_uint8(data, options.intensity)[..., None]
    return np.repeat(out, channels, axis=-1) if channels > 1 else out


# -- index and source ----------------------------------------------------------------------------------


def _volumes_below(folder: str) -> list[str]:
    """NIfTI files and series folders (folders that directly hold DICOM files) below ``folder``, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths = [os.path.join(dirpath, n) for n in sorted(filenames) if not n.startswith(".")]
        found.extend(p for p in paths if p.endswith(NIFTI_SUFFIXES))
        if any(images.is_dicom(p) for p in paths):
            found.append(dirpath)
    return sorted(found)


def index(data_dir: str, split: str) -> tuple[list[Record], list[Problem], tuple[str, ...], str]:
    candidate = os.path.join(data_dir, split)
    root = candidate if split and os.path.isdir(candidate) else data_dir
    csv_path = os.path.join(root, LABELS_CSV)
    problems: list[Problem] = []
    records: list[Record] = []
    if os.path.isfile(csv_path):
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise DataError(f"{csv_path}: needs the columns 'path' and 'label' (got {reader.fieldnames})")
            rows = [(line, row["path"], row["label"]) for line, row in enumerate(reader, start=2)]
        class_names = tuple(sorted({label for _, _, label in rows if label}))
        for line, rel, label in rows:
            path = os.path.join(root, rel)
            if not label:
                problems.append(Problem("unknown_label", f"{csv_path}:{line}", "empty label; row left out"))
            elif not (is_nifti(path) or (os.path.isdir(path) and dicom_files(path))):
                problems.append(Problem("missing_file", f"{csv_path}:{line}",
                                        f"{path} is neither a NIfTI file nor a folder of DICOM slices"))
            else:
                records.append(Record(path, class_names.index(label), rel))
        return records, problems, class_names, root
    class_dirs = sorted(e for e in os.listdir(root) if not e.startswith(".") and os.path.isdir(os.path.join(root, e)))
    if not class_dirs:
        raise DataError(f"{root}: no class folders and no {LABELS_CSV}")
    for label, name in enumerate(class_dirs):
        found = _volumes_below(os.path.join(root, name))
        if not found:
            problems.append(Problem("empty_class", os.path.join(root, name),
                                    f"class folder {name!r} (index {label}) holds no NIfTI file or DICOM series"))
        records.extend(Record(p, label, os.path.relpath(p, root)) for p in found)
    return records, problems, tuple(class_dirs), root


class VolumeSource(RecordSource):
    """Volumes of the user's files: ``source[i]`` -> ``{"image": uint8 [S, S, S, C], "label": int}``."""

    def __init__(self, info: DatasetInfo, records: list[Record], *, split: str, image_size: int, channels: int,
                 class_names: tuple[str, ...], problems: list[Problem], root: str,
                 options: VolumeTransform = VolumeTransform()):
        super().__init__(info, records, split=split, image_size=image_size, channels=channels,
                         class_names=class_names, problems=problems, root=root)
        self.options = options

    def __getitem__(self, index: int) -> dict[str, Any]:
        volume = read_volume(self.paths[index])
        return {"image": transform(volume, self.image_size, self.options, self.channels),
                "label": int(self.labels[index])}


def open_source(info: DatasetInfo, data_dir: str | None, *, split: str = "train", image_size: int | None = None,
                channels: int = 1, strict: bool = False, allow_upscale: bool = False,
                options: VolumeTransform = VolumeTransform()) -> VolumeSource:
    """A ``volume-folder`` split (``allow_upscale`` is accepted for the common signature: volumes are
    always resized or padded to the cube)."""
    del allow_upscale
    data_dir = require_dir(data_dir, info.name)
    records, problems, class_names, root = index(data_dir, split)
    finish_index(info.name, root, records, problems, strict)
    return VolumeSource(info, records, split=split, image_size=image_size or info.image_size, channels=channels,
                        class_names=class_names, problems=problems, root=root, options=options)
