"""Built-in phantoms: determinism, natural variation, and the measurement separating the classes."""

import numpy as np
import pytest

from medfusion_jax.data import DATASETS, make_dataset

PHANTOMS = ["phantom-fundus", "phantom-cxr", "phantom-histo"]


@pytest.mark.parametrize("name", PHANTOMS)
def test_deterministic_per_seed_and_index(name):
    a = make_dataset(name, num_examples=20, seed=7)
    b = make_dataset(name, num_examples=20, seed=7)
    np.testing.assert_array_equal(a[13]["image"], b[13]["image"])  # also: any order, fresh object
    assert a[13]["label"] == 1 and a[12]["label"] == 0
    assert not np.array_equal(a[13]["image"], a[15]["image"])
    assert not np.array_equal(a[13]["image"], make_dataset(name, num_examples=20, seed=8)[13]["image"])
    test = make_dataset(name, split="test", num_examples=20, seed=7)
    assert not np.array_equal(a[13]["image"], test[13]["image"])
    big = make_dataset(name, image_size=256, num_examples=20, seed=7)[13]["image"]
    assert big.shape == (256, 256, 3) and big.dtype == np.uint8
    gray = make_dataset(name, channels=1, num_examples=20)[0]["image"]
    assert gray.shape == (64, 64, 1)


@pytest.mark.parametrize("name", PHANTOMS)
def test_natural_variation_within_a_class(name):
    src = make_dataset(name, num_examples=40)
    info = DATASETS[name]
    images = np.stack([src[i]["image"].astype(np.float32) for i in range(0, 40, 2)])  # class 0
    diffs = [np.abs(images[i] - images[j]).mean() for i in range(5) for j in range(i + 1, 5)]
    assert min(diffs) > 3.0  # no two images of a class are near copies (of 255 grey levels)
    brightness = images.mean(axis=(1, 2, 3))
    assert brightness.std() > 1.0
    values = np.array([info.measure(im.astype(np.uint8)) for im in images])
    assert values.std() > 0.01  # the feature itself varies within the class


@pytest.mark.parametrize("name", PHANTOMS)
@pytest.mark.parametrize("size, count", [(64, 120), (256, 40)])
def test_measurement_separates_the_classes(name, size, count):
    info = DATASETS[name]
    src = make_dataset(name, image_size=size, num_examples=count, seed=123)
    predicted = np.array([info.classify(src[i]["image"]) for i in range(count)])
    labels = np.arange(count) % 2
    accuracy = [np.mean(predicted[labels == c] == c) for c in (0, 1)]
    assert min(accuracy) >= 0.95, (name, size, accuracy)


def test_measurements_read_the_clinical_quantities():
    # Class-conditional medians sit where the generators put them (cup-to-disc ratio, CTR).
    fundus = make_dataset("phantom-fundus", image_size=256, num_examples=16)
    cdr = np.array([DATASETS["phantom-fundus"].measure(fundus[i]["image"]) for i in range(16)])
    assert 0.15 <= np.median(cdr[0::2]) <= 0.40 and 0.70 <= np.median(cdr[1::2]) <= 0.90
    cxr = make_dataset("phantom-cxr", image_size=256, num_examples=16)
    ctr = np.array([DATASETS["phantom-cxr"].measure(cxr[i]["image"]) for i in range(16)])
    assert 0.36 <= np.median(ctr[0::2]) <= 0.45 and 0.55 <= np.median(ctr[1::2]) <= 0.66
    # The measurements also accept model outputs in [-1, 1], and give NaN where nothing is found.
    x = fundus[1]["image"].astype(np.float32) / 127.5 - 1.0
    assert abs(DATASETS["phantom-fundus"].measure(x) - cdr[1]) < 1e-3
    blank = np.zeros((64, 64, 3), np.uint8)
    assert np.isnan(DATASETS["phantom-fundus"].measure(blank)) and np.isnan(DATASETS["phantom-cxr"].measure(blank))


# -- phantom-brain: volumes ----------------------------------------------------------------------------

def test_brain_volumes_are_deterministic_single_channel_cubes():
    a, b = make_dataset("phantom-brain", num_examples=6, seed=3), make_dataset("phantom-brain", num_examples=6, seed=3)
    item = a[5]
    assert item["image"].shape == (32, 32, 32, 1) and item["image"].dtype == np.uint8 and item["label"] == 1
    np.testing.assert_array_equal(item["image"], b[5]["image"])
    assert not np.array_equal(a[5]["image"], a[3]["image"])
    assert make_dataset("phantom-brain", image_size=48, num_examples=2)[0]["image"].shape == (48, 48, 48, 1)
    assert make_dataset("phantom-brain", channels=3, num_examples=2)[0]["image"].shape == (32, 32, 32, 3)
    assert DATASETS["phantom-brain"].spatial_dims == 3


@pytest.mark.parametrize("size, count", [(32, 100), (64, 30)])
def test_brain_measurement_separates_the_classes_and_reads_the_drawn_ratio(size, count):
    """The ventricle-to-brain ratio read back from the volume: >= 95 % of each class on its side of 0.06,
    and close to the ratio the generator drew (the first draw of each item's random stream): on average
    within 0.01 (and each within 0.02 at 64^3, where fewer voxels are partial)."""
    from medfusion_jax.data.phantoms import brain
    from medfusion_jax.data.phantoms.common import rng_for
    info = DATASETS["phantom-brain"]
    src = make_dataset("phantom-brain", image_size=size, num_examples=count, seed=123)
    measured = np.array([info.measure(src[i]["image"]) for i in range(count)])
    labels = np.arange(count) % 2
    accuracy = [np.mean((measured[labels == c] > info.threshold) == (c == info.positive_class)) for c in (0, 1)]
    assert min(accuracy) >= 0.95, (size, accuracy)
    drawn = np.array([rng_for(123, "train", i).uniform(*brain.VBR_RANGES[i % 2]) for i in range(count)])
    assert abs(np.mean(measured - drawn)) < 0.01
    if size >= 64:
        assert np.max(np.abs(measured - drawn)) < 0.02
    assert np.corrcoef(measured, drawn)[0, 1] > 0.95
    # Model outputs in [-1, 1] measure the same; a blank volume has no brain.
    x = src[1]["image"].astype(np.float32) / 127.5 - 1.0
    assert abs(info.measure(x) - measured[1]) < 1e-3
    assert np.isnan(info.measure(np.zeros((32, 32, 32, 1), np.uint8)))
