"""Any image folder (torchvision ``ImageFolder`` convention), for hospital exports and own data.

Layouts read::

    DATA_DIR/<class_a>/**/*.png|jpg|jpeg|tif|tiff|bmp|dcm|<DICOM without suffix>
    DATA_DIR/<class_b>/...          -> one class per sub-folder, sorted by name (index = position)

    DATA_DIR/*.png ...              -> flat folder: one class, named after the folder

If ``DATA_DIR/<split>`` exists (e.g. ``train``/``test``), it is used as the root for that split.
Images are found recursively inside each class folder (as ``ImageFolder`` does).

Any bit depth and mode that :mod:`medfusion_jax.data.images` decodes is accepted: 8/16-bit
grayscale, RGB, palette, DICOM (windowed from its tags). Preprocessing: shorter side to
``image_size`` and centre crop (torchvision ``Resize`` + ``CenterCrop``), ``channels`` 3 (gray
replicated) or 1.

Problems collected (not fatal): empty class folders (the class keeps its index so that indices
match ``ImageFolder``), image files next to class folders (ignored, warning).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from medfusion_jax.data import images
from medfusion_jax.data.errors import DataError, Problem
from medfusion_jax.data.source import FileSource, Record, open_file_source, walk_images

if TYPE_CHECKING:
    from medfusion_jax.data.registry import DatasetInfo


def index(data_dir: str, split: str) -> tuple[list[Record], list[Problem], tuple[str, ...], str]:
    candidate = os.path.join(data_dir, split)
    root = candidate if split and os.path.isdir(candidate) else data_dir
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    class_dirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    loose = [os.path.join(root, e) for e in entries
             if e not in class_dirs and images.is_image_file(os.path.join(root, e))]
    problems: list[Problem] = []
    records: list[Record] = []
    if not class_dirs:
        class_names = (os.path.basename(os.path.abspath(root)) or "images",)
        for path in walk_images(root):
            records.append(Record(path, 0, os.path.relpath(path, root)))
        return records, problems, class_names, root
    for path in loose:
        problems.append(Problem("ignored_file", path, "image next to class folders belongs to no class; ignored",
                                "warning"))
    for label, name in enumerate(class_dirs):
        folder = os.path.join(root, name)
        found = walk_images(folder)
        if not found:
            problems.append(Problem("empty_class", folder, f"class folder {name!r} (index {label}) contains no images"))
        records.extend(Record(p, label, os.path.relpath(p, root)) for p in found)
    if not records:
        raise DataError(f"{root}: no image files in any class folder ({', '.join(class_dirs)})")
    return records, problems, tuple(class_dirs), root


def open_source(info: DatasetInfo, data_dir: str | None, **options) -> FileSource:
    """Any class-per-folder tree: its sub-folder names are the classes; shorter side resized, then cropped."""
    def indexed(d, split):
        records, problems, class_names, root = index(d, split)
        return records, problems, root, class_names

    return open_file_source(info, data_dir, indexed, geometry="shorter-side-crop", **options)
