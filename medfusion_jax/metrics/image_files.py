"""Minimal image-folder reading for the metric CLIs: list the files, decode them like the reference.

A folder is read like torchvision's ``ImageFolder`` where it has class sub-folders (each sub-folder
is a class, searched recursively, classes and files in sorted order); image files directly in such a
folder are left out, as ``ImageFolder`` does (``eval.sample`` keeps its ``grid.png`` there). A folder
without class sub-folders is one unnamed class (``''``). Images are decoded with PIL and ``.convert('RGB')``, as the
reference did: grayscale is copied into 3 channels, alpha is dropped, 16-bit values are clipped to 255.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

# torchvision's IMG_EXTENSIONS.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFilesError(ValueError):
    """A path is missing, is not a folder, holds no images, or an image cannot be decoded."""


@dataclasses.dataclass(frozen=True)
class ImageFile:
    path: Path
    label: str  # class sub-folder name; '' for images directly in the root folder


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_image_files(root: str | os.PathLike) -> list[ImageFile]:
    """Image files of ``root`` (class sub-folders allowed), sorted by class then path."""
    root = Path(root)
    if not root.exists():
        raise ImageFilesError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ImageFilesError(f"not a folder: {root}")
    files = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        found = sorted(p for p in sub.rglob("*") if _is_image(p))
        files.extend(ImageFile(p, sub.name) for p in found)
    if not files:
        files = [ImageFile(p, "") for p in sorted(root.iterdir()) if _is_image(p)]
    if not files:
        raise ImageFilesError(
            f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} in it and in its sub-folders)"
        )
    return files


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
