"""Image utilities shared by every layer: the [-1, 1] <-> uint8 conversions, grids, PNG and JSON files
written atomically, and image folders read like torchvision's ``ImageFolder``.

Everything here is plain numpy and PIL (no model, no data set), so data readers, training, evaluation
and the commands all use the same conversions:

* :func:`normalize`: uint8 -> float32 [-1, 1], bit-identical to ``ToTensor`` + ``Normalize(0.5, 0.5)``
  (spec 2.1); :func:`to_uint8` is the reference's ``sample_dataset.py`` conversion back (clip, scale,
  *truncate*); :func:`to_uint8_rounded` rounds instead (figures only).
* :func:`image_grid`, :func:`save_png`, :func:`write_png_atomic`, :func:`write_json_atomic`,
  :func:`read_png`, :func:`read_json`.
* Image folders (the metric commands' inputs): a folder is read like ``ImageFolder`` where it has class
  sub-folders (each sub-folder is a class, searched recursively, classes and files in sorted order);
  image files directly in such a folder are left out, as ``ImageFolder`` does (``eval.sample`` keeps its
  ``grid.png`` there). A folder without class sub-folders is one unnamed class (``''``). Images are
  decoded with PIL and ``.convert('RGB')``, as the reference did: grayscale is copied into 3 channels,
  alpha is dropped, 16-bit values are clipped to 255.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

# torchvision's IMG_EXTENSIONS.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# -- value conversions -----------------------------------------------------------------------------------


def normalize(images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], bit-identical to torchvision ``ToTensor`` + ``Normalize(0.5, 0.5)``.

    Same float32 operations as torch: ``x / 255``, ``- 0.5``, then ``/ 0.5``, which is the exact
    ``* 2``; done in place in ``out`` (or a new buffer).
    """
    if out is None:
        out = np.empty(images.shape, np.float32)
    np.divide(images, np.float32(255.0), out=out, dtype=np.float32)
    out -= np.float32(0.5)
    out *= np.float32(2.0)
    return out


def to_uint8(images: Any) -> np.ndarray:
    """clip to [-1, 1], (x + 1) / 2 * 255, then *truncate* to uint8, as the reference's sample_dataset.py."""
    x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) / 2.0 * 255.0
    return x.astype(np.uint8)


def to_uint8_rounded(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8, rounded (for the PNG only)."""
    x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) / 2.0 * 255.0
    return np.round(x).astype(np.uint8)


# -- grids and files ---------------------------------------------------------------------------------


#: The three orthogonal planes of a volume [D, H, W, C] (our axes: D inferior -> superior, H anterior ->
#: posterior, W right -> left): axial (H x W), coronal (D x W) and sagittal (D x H).
PLANES = ("axial", "coronal", "sagittal")
#: Where :func:`plane_slices` cuts by default: through the centre.
MID = (0.5,)


def plane_slices(volumes: np.ndarray, plane: str, positions: tuple[float, ...] = MID) -> np.ndarray:
    """Volumes ``[N, D, H, W, C]`` -> the 2-D slices ``[N * len(positions), rows, columns, C]`` of one plane
    (volume by volume, then position by position), shown as a radiologist reads them: superior up in
    the coronal and sagittal planes, anterior up in the axial plane, the patient's right on the image's
    left. ``positions`` are fractions of the cut axis: index ``int(p * n)`` (0.5: the centre, ``n // 2``)."""
    volumes = np.asarray(volumes)
    if volumes.ndim != 5:
        raise ValueError(f"expected volumes [N, D, H, W, C], got shape {volumes.shape}")
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}")
    axis = 1 + PLANES.index(plane)
    n = volumes.shape[axis]
    if not positions or any(not 0.0 <= p < 1.0 for p in positions):
        raise ValueError(f"slice positions must be fractions in [0, 1), got {positions}")
    cut = np.stack([np.take(volumes, min(int(p * n), n - 1), axis=axis) for p in positions], axis=1)
    cut = cut.reshape((-1,) + cut.shape[2:])  # [N * P, rows, columns, C]
    return cut if plane == "axial" else cut[:, ::-1]  # coronal/sagittal rows run D: flip to superior up


def orthogonal_mid_slices(volumes: np.ndarray) -> np.ndarray:
    """Volumes ``[N, D, H, W, C]`` -> images ``[N, S, 3 S, C]`` (S the largest side): the axial, coronal
    and sagittal slices through each volume's centre (:func:`plane_slices`), side by side, each centred
    on an S x S canvas of the volume's dtype. How a person looks at a volume in a report."""
    n, d, h, w, c = volumes.shape
    side = max(d, h, w)
    canvas = np.zeros((n, side, 3 * side, c), volumes.dtype)
    for k, plane in enumerate(PLANES):
        sl = plane_slices(volumes, plane)
        top, left = (side - sl.shape[1]) // 2, k * side + (side - sl.shape[2]) // 2
        canvas[:, top:top + sl.shape[1], left:left + sl.shape[2]] = sl
    return canvas


def image_grid(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tile uint8 NHWC images into one HWC image, row-major, with ``pad`` black pixels between tiles.

    Volumes (NDHWC) are shown by their three orthogonal mid-slices (:func:`orthogonal_mid_slices`)."""
    if images.ndim == 5:
        images = orthogonal_mid_slices(images)
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
    return grid


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 [H, W] or [H, W, C] image as PNG, creating the parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.asarray(image)
    Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image).save(path)
    return path


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write ``image`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


#: Our volume axes (D, H, W) = inferior -> superior, anterior -> posterior, right -> left, stored in NIfTI
#: as (x, y, z) = (W, H, D) with 1 mm voxels: x runs to the left (-R), y to the back (-A), z up (+S).
NIFTI_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
NIFTI_SUFFIX = ".nii.gz"
#: Volume files read as a volume folder.
VOLUME_EXTENSIONS = (".nii", ".nii.gz")


def _nifti_data(volume: np.ndarray) -> np.ndarray:
    """[D, H, W, C] -> NIfTI's [x, y, z] (one channel) or [x, y, z, C]."""
    data = np.transpose(np.asarray(volume), (2, 1, 0, 3))
    return data[..., 0] if data.shape[-1] == 1 else data


def write_nifti_atomic(path: Path, volume: np.ndarray) -> None:
    """Write a ``[D, H, W, C]`` volume as compressed NIfTI-1 (:data:`NIFTI_AFFINE`), through a temporary
    file and ``os.replace``, like :func:`write_png_atomic`."""
    import nibabel  # a volume-only need: imported when volumes are written

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{NIFTI_SUFFIX}")
    try:
        nibabel.save(nibabel.Nifti1Image(_nifti_data(volume), NIFTI_AFFINE), tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_nifti(path: str | Path) -> np.ndarray:
    """A volume written by :func:`write_nifti_atomic`, back as ``[D, H, W, C]`` in its stored dtype."""
    import nibabel

    data = np.asanyarray(nibabel.load(str(path)).dataobj)
    if data.ndim == 3:
        data = data[..., None]
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0, 3)))


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON through a temporary file and ``os.replace`` (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_png(path: str | Path) -> np.ndarray:
    """uint8 [H, W, C] as stored (a grayscale PNG gets a channel axis of 1)."""
    with Image.open(path) as img:
        a = np.asarray(img)
    return a[..., None] if a.ndim == 2 else a


# -- image folders -------------------------------------------------------------------------------------


class ImageFilesError(ValueError):
    """A path is missing, is not a folder, holds no images, or an image cannot be decoded."""


@dataclasses.dataclass(frozen=True)
class ImageFile:
    path: Path
    label: str  # class sub-folder name; '' for images directly in the root folder


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _is_volume(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_EXTENSIONS) and path.is_file()


def _list_files(root: str | os.PathLike, member, kind: str, extensions: tuple[str, ...]) -> list[ImageFile]:
    root = Path(root)
    if not root.exists():
        raise ImageFilesError(f"{kind} folder not found: {root}")
    if not root.is_dir():
        raise ImageFilesError(f"not a folder: {root}")
    files = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        found = sorted(p for p in sub.rglob("*") if member(p))
        files.extend(ImageFile(p, sub.name) for p in found)
    if not files:
        files = [ImageFile(p, "") for p in sorted(root.iterdir()) if member(p)]
    if not files:
        raise ImageFilesError(
            f"no {kind}s in {root} (looked for {', '.join(extensions)} in it and in its sub-folders)"
        )
    return files


def list_image_files(root: str | os.PathLike) -> list[ImageFile]:
    """Image files of ``root`` (class sub-folders allowed), sorted by class then path."""
    return _list_files(root, _is_image, "image", IMAGE_EXTENSIONS)


def list_volume_files(root: str | os.PathLike) -> list[ImageFile]:
    """NIfTI volume files of ``root`` (class sub-folders allowed, as ``eval.sample`` writes them), sorted
    by class then path."""
    return _list_files(root, _is_volume, "volume", VOLUME_EXTENSIONS)


def holds_volumes(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a folder of NIfTI volumes rather than of images: it holds a NIfTI file (a volume
    sample folder also holds its preview ``grid.png``)."""
    root = Path(root)
    return root.is_dir() and any(_is_volume(p) for p in root.rglob("*"))


def list_items(root: str | os.PathLike) -> tuple[list[ImageFile], Callable[[str | os.PathLike], np.ndarray]]:
    """The files of an image folder or of a volume folder (:func:`holds_volumes`), with the function that
    loads one: :func:`load_rgb` for images, :func:`load_volume` for volumes."""
    if holds_volumes(root):
        return list_volume_files(root), load_volume
    return list_image_files(root), load_rgb


def load_volume(path: str | os.PathLike) -> np.ndarray:
    """One uint8 NIfTI volume as ``[D, H, W, C]`` (as :func:`write_nifti_atomic` stores our volumes)."""
    try:
        volume = read_nifti(path)
    except Exception as err:  # noqa: BLE001 - nibabel raises many kinds for a broken file
        raise ImageFilesError(f"cannot read volume {path}: {err}") from err
    if volume.dtype != np.uint8:
        raise ImageFilesError(f"volume {path} holds {volume.dtype} values; expected uint8 (as eval.sample writes)")
    return volume


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """One image as uint8 [H, W, 3], via PIL ``.convert('RGB')``."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageFilesError(f"cannot read image {path}: {err}") from err


def iter_images(files: Sequence[ImageFile]) -> Iterator[np.ndarray]:
    """Decode ``files`` in order."""
    for f in files:
        yield load_rgb(f.path)
