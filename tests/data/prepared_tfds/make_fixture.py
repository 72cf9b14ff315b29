"""Writes the fixture of data prepared by the TFDS builders that ``prepare`` used until 2026-12-07.

Run at commit 0ec7de0 (the last with ``medfusion_jax/data/tfds_builders.py``), from the repository root:

    python tests/data/prepared_tfds/make_fixture.py

It prepares the test suite's small AIROGS tree (16 px, raw) and CheXpert tree (16 px, PNG) with
TFDS (``file_format="array_record"``, records uncompressed), then reads every split back with
TFDS's own reader (``tfds.builder_from_directory(...).as_data_source``) and stores what it read in
``expected.npz``. Today's reader must return the same images, labels and ids from these folders.
"""

import contextlib
import os
import shutil
import sys
import tempfile

import numpy as np
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from test_data_readers import make_airogs, make_chexpert  # noqa: E402

from medfusion_jax.data.tfds_builders import prepare  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    expected = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_airogs(os.path.join(tmp, "airogs"))
        release = make_chexpert(os.path.join(tmp, "chexpert"))
        with contextlib.redirect_stdout(sys.stderr):
            paths = {
                "airogs": prepare("airogs", os.path.join(tmp, "airogs"), HERE, image_size=16),
                "chexpert": prepare("chexpert", release, HERE, image_size=16, encoding="png"),
            }
    for name, path in paths.items():
        builder = tfds.builder_from_directory(path)
        for split in builder.info.splits:
            source = builder.as_data_source(split=split)
            rows = [source[i] for i in range(len(source))]
            expected[f"{name}/{split}/image"] = np.stack([np.asarray(r["image"]) for r in rows])
            expected[f"{name}/{split}/label"] = np.asarray([r["label"] for r in rows], np.int64)
            expected[f"{name}/{split}/id"] = np.asarray([r["id"].decode() for r in rows])
    np.savez(os.path.join(HERE, "expected.npz"), **expected)
    for junk in ("downloads",):
        shutil.rmtree(os.path.join(HERE, junk), ignore_errors=True)


if __name__ == "__main__":
    main()
