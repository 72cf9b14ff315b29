"""CRC-DX (colorectal cancer H&E tiles from TCGA diagnostic slides), MSI-H vs non-MSI-H.

Layouts read::

    DATA_DIR/MSIH/*.jpg      DATA_DIR/nonMSIH/*.jpg          (the reference's folders)
    DATA_DIR/MSIMUT/*.png    DATA_DIR/MSS/*.png              (the public Kather release)

with any nesting below the class folder; the label is the nearest enclosing folder whose name is a
class name (case-insensitive), as the reference takes the parent folder's name. Both namings map
to the reference's indices: ``MSIH``/``MSIMUT`` -> 0, ``nonMSIH``/``MSS`` -> 1.

Splits: if the data dir has split folders (``train``/``test``, or Kather's ``CRC_DX_TRAIN``/
``CRC_DX_TEST``; ``validation``/``val`` too), ``split`` picks one; without them the data dir itself
is the ``train`` split, like the reference's ``.../train/`` path.

Preprocessing (reference): 512x512 RGB, no resize or crop. Another ``image_size`` resizes the
shorter side and centre-crops (torchvision semantics).

Problems collected (not fatal): images outside any class folder, empty class folders.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from medfusion_jax.data.errors import DataError, Problem
from medfusion_jax.data.source import FileSource, Record, open_file_source, walk_images

if TYPE_CHECKING:
    from medfusion_jax.data.registry import DatasetInfo

CLASS_NAMES = ("MSIH", "nonMSIH")
#: Folder names (lower case) of both namings -> reference class index.
FOLDER_LABELS = {"msih": 0, "msimut": 0, "nonmsih": 1, "mss": 1}
SPLIT_FOLDERS = {
    "train": ("train", "crc_dx_train"),
    "test": ("test", "crc_dx_test"),
    "validation": ("validation", "val", "valid", "crc_dx_val"),
}


def split_root(data_dir: str, split: str) -> str:
    if split not in SPLIT_FOLDERS:
        raise DataError(f"{data_dir}: CRC-DX splits are {sorted(SPLIT_FOLDERS)} (got {split!r})")
    children = {c.lower(): c for c in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, c))}
    for name in SPLIT_FOLDERS[split]:
        if name in children:
            return os.path.join(data_dir, children[name])
    has_splits = any(n in children for names in SPLIT_FOLDERS.values() for n in names)
    if split == "train" and not has_splits:
        return data_dir
    raise DataError(f"{data_dir}: no folder for split {split!r} (looked for {', '.join(SPLIT_FOLDERS[split])})")


def class_folder(path: str, root: str) -> tuple[str, int] | None:
    """The nearest enclosing class folder of ``path`` (below ``root``) and its label."""
    folder = os.path.dirname(path)
    while len(folder) > len(root):
        label = FOLDER_LABELS.get(os.path.basename(folder).lower())
        if label is not None:
            return folder, label
        folder = os.path.dirname(folder)
    return None


def index(data_dir: str, split: str) -> tuple[list[Record], list[Problem], str]:
    root = os.path.abspath(split_root(data_dir, split))
    problems: list[Problem] = []
    records: list[Record] = []
    used: set[str] = set()
    for path in walk_images(root):
        found = class_folder(path, root)
        if found is None:
            problems.append(
                Problem("unknown_label", path, "not inside a class folder (MSIH, nonMSIH, MSIMUT or MSS)")
            )
            continue
        used.add(found[0])
        records.append(Record(path, found[1], os.path.relpath(path, root)))
    class_dirs = [
        os.path.join(dirpath, d)
        for dirpath, dirnames, _ in os.walk(root)
        for d in dirnames
        if d.lower() in FOLDER_LABELS
    ]
    for folder in class_dirs:
        if not any(u == folder or u.startswith(folder + os.sep) for u in used):
            problems.append(Problem("empty_class", folder, "class folder contains no images"))
    return records, problems, root


def open_source(info: DatasetInfo, data_dir: str | None, **options) -> FileSource:
    """CRC-DX: the split folders below ``data_dir``; shorter side resized, then centre-cropped."""
    return open_file_source(info, data_dir, lambda d, split: (*index(d, split), None),
                            geometry="shorter-side-crop", **options)
