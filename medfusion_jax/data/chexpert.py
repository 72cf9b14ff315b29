"""CheXpert (chest radiographs), cardiomegaly vs no cardiomegaly.

Layout read (the official release, either ``CheXpert-v1.0`` or ``CheXpert-v1.0-small``)::

    DATA_DIR/train.csv     columns Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding, ...,
    DATA_DIR/valid.csv     Cardiomegaly, ...
    DATA_DIR/train/patient00001/study1/view1_frontal.jpg

``Path`` starts with the release folder name (``CheXpert-v1.0-small/train/...``); it is resolved
against the CSV's parent folder, the data dir, and with the first component removed against the
CSV's folder, whichever finds the files (decided once, on the first row whose file exists). The data
dir may also be the folder that contains the release folder.

Splits: ``train`` -> ``train.csv``, ``validation`` (or ``valid``) -> ``valid.csv``.

Labels (reference comment, spec section 2.2): only frontal views (``Frontal/Lateral == Frontal``);
``Cardiomegaly`` 1 (positive) and -1 (uncertain) -> 1 ``cardiomegaly``; blank and 0 -> 0
``no cardiomegaly``. On the official ``train.csv`` this gives 191,027 frontal images, 30,092 with and
160,935 without cardiomegaly, the paper's counts. (The reference read a privately preprocessed copy
with its own CSV; this reader applies the same rule to the official files.)

Preprocessing: resized to 256x256 (torchvision ``Resize((256, 256))``, PIL bilinear), like the
reference's preprocessed 256x256 copy, and replicated to 3 channels like the reference's
``convert('RGB')``; ``channels=1`` keeps one.

Problems collected (not fatal): rows whose file is missing, unknown ``Cardiomegaly`` values, duplicate
paths. Lateral views are left out silently, as the task defines.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from medfusion_jax.data import csvutil
from medfusion_jax.data.errors import DataError, Problem
from medfusion_jax.data.source import FileSource, Record, open_file_source

if TYPE_CHECKING:
    from medfusion_jax.data.registry import DatasetInfo

CLASS_NAMES = ("no cardiomegaly", "cardiomegaly")
COLUMNS = ("Path", "Frontal/Lateral", "Cardiomegaly")
CSV_FOR_SPLIT = {"train": "train.csv", "validation": "valid.csv", "valid": "valid.csv"}
SPLITS = ("train", "validation")
_POSITIVE = {"1", "1.0", "-1", "-1.0"}
_NEGATIVE = {"", "0", "0.0"}


def find_csv(data_dir: str, split: str) -> str:
    name = CSV_FOR_SPLIT[split]
    candidates = [os.path.join(data_dir, name)]
    for child in sorted(os.listdir(data_dir)):
        if child.lower().startswith("chexpert"):
            candidates.append(os.path.join(data_dir, child, name))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise DataError(f"{data_dir}: no {name} in the data dir or a CheXpert* folder inside it (CheXpert)")


def label_of(value: str) -> int | None:
    """Reference rule: 1 and -1 (uncertain) -> 1; blank and 0 -> 0; anything else -> None."""
    if value in _POSITIVE:
        return 1
    if value in _NEGATIVE:
        return 0
    return None


def _resolvers(csv_path: str, data_dir: str):
    csv_dir = os.path.dirname(os.path.abspath(csv_path))
    parent = os.path.dirname(csv_dir)

    def strip_first(rel: str) -> str:
        parts = rel.replace("\\", "/").split("/", 1)
        return parts[1] if len(parts) == 2 else rel

    return [
        lambda rel: os.path.join(parent, rel),
        lambda rel: os.path.join(data_dir, rel),
        lambda rel: os.path.join(csv_dir, strip_first(rel)),
    ]


def index(data_dir: str, split: str) -> tuple[list[Record], list[Problem]]:
    csv_path = find_csv(data_dir, split)
    problems: list[Problem] = []
    rows: list[tuple[str, str, int]] = []
    seen: dict[str, int] = {}
    for line, row in csvutil.read_rows(csv_path, COLUMNS):
        where = f"{csv_path}:{line}"
        if row["Frontal/Lateral"].lower() != "frontal":
            continue
        rel = row["Path"]
        if rel in seen:
            problems.append(Problem("duplicate_id", where, f"path {rel!r} already listed on line {seen[rel]}"))
            continue
        seen[rel] = line
        label = label_of(row["Cardiomegaly"])
        if label is None:
            problems.append(
                Problem("unknown_label", where,
                        f"unknown Cardiomegaly value {row['Cardiomegaly']!r} for {rel} (expected 1, 0, -1 or blank)")
            )
            continue
        rows.append((where, rel, label))
    resolvers = _resolvers(csv_path, data_dir)
    resolve = next(
        (r for where, rel, _ in rows for r in resolvers if os.path.isfile(r(rel))), resolvers[0]
    )
    records = []
    for where, rel, label in rows:
        path = resolve(rel)
        if not os.path.isfile(path):
            problems.append(Problem("missing_file", where, f"image {rel} listed in the CSV not found ({path})"))
            continue
        records.append(Record(path, label, rel))
    return records, problems


def open_source(info: DatasetInfo, data_dir: str | None, **options) -> FileSource:
    """CheXpert: 'train' and 'validation' ('valid') from their CSVs; images stretched to a square."""
    return open_file_source(info, data_dir, lambda d, split: (*index(d, split), d, None), geometry="stretch",
                            splits=tuple(CSV_FOR_SPLIT), **options)
