"""AIROGS (Rotterdam EyePACS AIROGS, referable glaucoma in colour fundus photographs).

Layout read (the official release, as downloaded)::

    DATA_DIR/train_labels.csv          columns challenge_id, class (NRG | RG)
    DATA_DIR/0/TRAIN000000.jpg         images <challenge_id>.jpg in any sub-folder(s)
    DATA_DIR/1/...

The reference's own layout (spec section 2.2: images in ``.../data_256x256/`` and the CSV one level
up) works too: the CSV is looked for in the data dir, then in its parent. Images are found
anywhere below the data dir by their stem, so the numbered sub-folders, a flat folder and the
reference's pre-resized folder are all read the same way.

Labels (reference): ``NRG`` -> 0, ``RG`` -> 1; every CSV row is used (the reference trains on all
101,442 rows; its comment gives RG = 3270, NRG = 98172). There is one split, ``train``.

Preprocessing (reference ``tests/dataset/test_dataset_airogs_prep.py``): shorter side to 256 with
torchvision ``Resize`` (PIL bilinear), centre crop 256x256. The reference then stored JPEGs and
trained from those; here the crop is taken straight from the original file (or from the
already-resized file, which is then used as is).

Problems collected (not fatal): CSV rows whose image is missing, unknown class values, duplicate
``challenge_id`` rows, the same id found in two folders, images not listed in the CSV (warning).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from medfusion_jax.data import csvutil
from medfusion_jax.data.errors import DataError, Problem
from medfusion_jax.data.source import FileSource, Record, open_file_source, walk_images

if TYPE_CHECKING:
    from medfusion_jax.data.registry import DatasetInfo

CLASS_NAMES = ("NRG", "RG")
LABELS = {"NRG": 0, "RG": 1}
CSV_NAME = "train_labels.csv"
COLUMNS = ("challenge_id", "class")
SPLITS = ("train",)


def find_csv(data_dir: str) -> str:
    for folder in (data_dir, os.path.dirname(os.path.abspath(data_dir))):
        path = os.path.join(folder, CSV_NAME)
        if os.path.isfile(path):
            return path
    raise DataError(f"{data_dir}: no {CSV_NAME} in the data dir or its parent (AIROGS)")


def index(data_dir: str) -> tuple[list[Record], list[Problem]]:
    """Records of all CSV rows whose image exists, and the problems found on the way."""
    csv_path = find_csv(data_dir)
    problems: list[Problem] = []
    by_stem: dict[str, str] = {}
    for path in walk_images(data_dir):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in by_stem:
            problems.append(Problem("duplicate_id", path,
                                    f"image id {stem!r} also found at {by_stem[stem]}; using that one"))
            continue
        by_stem[stem] = path
    records: list[Record] = []
    seen: dict[str, int] = {}
    for line, row in csvutil.read_rows(csv_path, COLUMNS):
        cid, cls = row["challenge_id"], row["class"]
        where = f"{csv_path}:{line}"
        if not cid:
            problems.append(Problem("missing_id", where, "empty challenge_id"))
            continue
        if cid in seen:
            problems.append(Problem("duplicate_id", where, f"challenge_id {cid!r} already listed on line {seen[cid]}"))
            continue
        seen[cid] = line
        if cls.upper() not in LABELS:
            problems.append(Problem("unknown_label", where, f"unknown class {cls!r} for {cid} (expected NRG or RG)"))
            continue
        path = by_stem.get(cid)
        if path is None:
            problems.append(Problem("missing_file", where,
                                    f"image {cid}.jpg listed in the CSV not found below {data_dir}"))
            continue
        records.append(Record(path, LABELS[cls.upper()], cid))
    for stem, path in by_stem.items():
        if stem not in seen:
            problems.append(Problem("ignored_file", path, f"image not listed in {CSV_NAME}", "warning"))
    return records, problems


def open_source(info: DatasetInfo, data_dir: str | None, **options) -> FileSource:
    """AIROGS: one 'train' split; the shorter side resized, then centre-cropped (the reference's geometry)."""
    return open_file_source(info, data_dir, lambda d, _split: (*index(d), d, None), geometry="shorter-side-crop",
                            splits=SPLITS, **options)
