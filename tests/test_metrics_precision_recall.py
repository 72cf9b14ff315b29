"""Improved precision/recall: the reference's variant (Euclidean, strict <) and the original (squared, <=)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfusion_jax.metrics.precision_recall import knn_radii, precision_recall

DATA = Path(__file__).resolve().parent / "data" / "metrics"


def test_knn_radii_hand_checked():
    # 1-D points 0, 1, 3, 6, 10; k = 3: the 4th smallest distance including the point itself.
    x = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]], np.float32)
    np.testing.assert_array_equal(knn_radii(x, 3), [6, 5, 3, 5, 9])
    np.testing.assert_array_equal(knn_radii(x, 3, variant="original"), [36, 25, 9, 25, 81])
    np.testing.assert_array_equal(knn_radii(x, 1), [1, 1, 2, 3, 4])


def test_strict_and_inclusive_boundaries_hand_checked():
    # Real 0, 2, 5 (k = 1 radii 2, 2, 3). Fake -2 sits exactly on the ball of 0: outside with the
    # reference's strict <, inside with the original's <=. Fake 7.5 is inside the ball of 5; 9 is out.
    real = np.array([[0.0], [2.0], [5.0]], np.float32)
    fake = np.array([[-2.0], [7.5], [9.0]], np.float32)
    ref = precision_recall(real, fake, k=1)
    orig = precision_recall(real, fake, k=1, variant="original")
    assert ref.precision == pytest.approx(1 / 3)
    assert orig.precision == pytest.approx(2 / 3)
    # Fake radii (k = 1): 9.5, 1.5, 1.5. Every real point is within 9.5 of -2.
    assert ref.recall == orig.recall == 1.0


def test_matches_reference_implementation():
    with np.load(DATA / "fid_pr_reference.npz") as ref:
        result = precision_recall(ref["real"], ref["fake"], k=3)
        assert result.precision == pytest.approx(float(ref["precision"]), abs=1e-7)
        assert result.recall == pytest.approx(float(ref["recall"]), abs=1e-7)


@pytest.mark.parametrize("block_size", [1, 7, 64, 4096])
def test_blocks_do_not_change_the_result(block_size):
    rng = np.random.default_rng(1)
    real = rng.normal(size=(90, 16)).astype(np.float32)
    fake = (rng.normal(size=(70, 16)) * 1.2 + 0.3).astype(np.float32)
    whole = precision_recall(real, fake, block_size=100_000)
    blocked = precision_recall(real, fake, block_size=block_size)
    assert blocked == whole
    # A block of one row is a matrix-vector product: float32 rounding may differ in the last bit.
    np.testing.assert_allclose(knn_radii(real, block_size=block_size), knn_radii(real, block_size=1000), rtol=1e-6)


def test_identical_sets_have_full_precision_and_recall():
    x = np.random.default_rng(2).normal(size=(40, 8)).astype(np.float32)
    assert precision_recall(x, x) == precision_recall(x, x, variant="original")
    result = precision_recall(x, x)
    assert (result.precision, result.recall) == (1.0, 1.0)


def test_disjoint_sets_have_zero_precision_and_recall():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(30, 4)).astype(np.float32)
    result = precision_recall(real, real + 100)
    assert (result.precision, result.recall) == (0.0, 0.0)


def test_errors():
    with pytest.raises(ValueError, match="variant"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 2)), variant="vgg")
    with pytest.raises(ValueError, match="N > k"):
        knn_radii(np.zeros((3, 2)), k=3)
    with pytest.raises(ValueError, match="same dim"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
