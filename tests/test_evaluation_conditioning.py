"""Conditioning accuracy: the phantom measurement applied per class folder."""

import numpy as np
import pytest
from PIL import Image

from medfusion_jax.data import get_info, make_dataset
from medfusion_jax.evaluation import conditioning


def _write_folder(root, source, swap=False):
    names = source.class_names
    for i in range(len(source)):
        item = source[i]
        label = int(item["label"])
        folder = root / names[1 - label if swap else label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(item["image"])).save(folder / f"{i:04d}.png")


def test_real_phantoms_score_high_and_swapped_labels_score_low(tmp_path):
    info = get_info("phantom-cxr")
    source = make_dataset("phantom-cxr", split="test", image_size=64, channels=3, num_examples=24)
    _write_folder(tmp_path / "right", source)
    _write_folder(tmp_path / "swapped", source, swap=True)
    right = conditioning.summary(conditioning.folder_accuracy(info, tmp_path / "right"))
    swapped = conditioning.summary(conditioning.folder_accuracy(info, tmp_path / "swapped"))
    assert right["balanced_accuracy"] >= 0.9
    assert swapped["balanced_accuracy"] <= 0.1
    assert right["chance"] == 0.5
    rows = right["classes"]
    assert [r["class_name"] for r in rows] == list(info.class_names)
    assert sum(r["num_images"] for r in rows) == 24
    # The measurement separates the classes: class 1 (cardiomegaly) has the larger ratio.
    assert rows[1]["measurement_mean"] > info.threshold > rows[0]["measurement_mean"]
    # Same numbers straight from the source (no PNG round trip: lossless, so equal).
    direct = conditioning.summary(conditioning.source_accuracy(info, source))
    assert direct["balanced_accuracy"] == right["balanced_accuracy"]


def test_unmeasurable_images_count_as_wrong(tmp_path):
    info = get_info("phantom-cxr")
    row = conditioning.class_accuracy(info, 1, [np.zeros((64, 64, 3), np.uint8)] * 3)
    assert row.num_images == 3 and row.num_unmeasurable == 3 and row.num_correct == 0
    assert row.accuracy == 0.0 and np.isnan(row.measurement_mean)


def test_unknown_class_folder_and_unmeasurable_dataset_are_named(tmp_path):
    info = get_info("phantom-cxr")
    (tmp_path / "pneumonia").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "pneumonia" / "a.png")
    with pytest.raises(ValueError, match="pneumonia"):
        conditioning.folder_accuracy(info, tmp_path)
    with pytest.raises(ValueError, match="folder"):
        conditioning.predicted_classes(get_info("folder"), [])
