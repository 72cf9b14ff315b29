"""KID against TorchMetrics' KernelInceptionDistance (fixture by tools/make_kid_reference.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfusion_jax.metrics import kid as kid_module
from medfusion_jax.metrics.kid import draw_subsets, kernel_inception_distance, poly_kernel, unbiased_mmd2

DATA = Path(__file__).resolve().parent / "data" / "metrics"


@pytest.fixture(scope="module")
def ref():
    with np.load(DATA / "kid_reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("name", ["fake", "same"])
@pytest.mark.parametrize("gram_limit", [kid_module.GRAM_LIMIT, 0])
def test_matches_torchmetrics_on_its_own_subsets(ref, name, gram_limit, monkeypatch):
    # gram_limit 0 forces the per-subset path: both paths must give TorchMetrics' numbers.
    monkeypatch.setattr(kid_module, "GRAM_LIMIT", gram_limit)
    other = ref[name]
    result = kernel_inception_distance(ref["real"], other, indices=(ref[f"real_idx_{name}"], ref[f"fake_idx_{name}"]))
    assert result.mean == pytest.approx(float(ref[f"kid_mean_{name}"]), rel=1e-5, abs=1e-12)
    assert result.std == pytest.approx(float(ref[f"kid_std_{name}"]), rel=1e-5)
    assert (result.subsets, result.subset_size) == (int(ref["subsets"]), int(ref["subset_size"]))


def test_float32_torchmetrics_agrees_to_its_rounding(ref):
    # TorchMetrics on float32 features (its Inception's dtype) differs from the float64 value by rounding only.
    result = kernel_inception_distance(ref["real"], ref["fake"], indices=(ref["real_idx_fake"], ref["fake_idx_fake"]))
    assert result.mean == pytest.approx(float(ref["kid_mean_fake_float32"]), rel=1e-4)


@pytest.mark.parametrize("name", ["fake", "same"])
def test_full_set_mmd_matches_poly_mmd(ref, name):
    n = len(ref[name])
    assert unbiased_mmd2(ref["real"][:n], ref[name]) == pytest.approx(float(ref[f"mmd_full_{name}"]), rel=1e-9)


def test_poly_kernel_hand_checked():
    x = np.array([[1.0, 2.0]])
    y = np.array([[3.0, -1.0], [0.0, 0.0]])
    # x.y = 1, 0; gamma = 1/2: (0.5 + 1)^3 = 3.375, (0 + 1)^3 = 1.
    np.testing.assert_allclose(poly_kernel(x, y), [[3.375, 1.0]])
    np.testing.assert_allclose(poly_kernel(x, y, degree=2, gamma=1.0, coef=0.0), [[1.0, 0.0]])


def test_default_subset_size_scales_to_the_sets():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(60, 8)), rng.normal(size=(45, 8))
    result = kernel_inception_distance(real, fake, subsets=5)
    assert (result.subsets, result.subset_size) == (5, 22)  # half the smaller set
    # Seeded: the same call gives the same numbers; another seed other subsets.
    assert kernel_inception_distance(real, fake, subsets=5) == result
    assert kernel_inception_distance(real, fake, subsets=5, seed=1).mean != result.mean


def test_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same = kernel_inception_distance(a, b, subsets=50, subset_size=200)
    shifted = kernel_inception_distance(a, b + 0.5, subsets=50, subset_size=200)
    assert abs(same.mean) < 3 * same.std + 1e-3
    assert shifted.mean > 10 * shifted.std > 0


def test_draws_are_without_replacement_and_in_range():
    real_idx, fake_idx = draw_subsets(30, 20, subsets=4, subset_size=20)
    for r, f in zip(real_idx, fake_idx, strict=True):
        assert len(set(r)) == 20 and len(set(f)) == 20
        assert r.max() < 30 and f.max() < 20


@pytest.mark.parametrize("kwargs, message", [
    (dict(subset_size=100), "subset_size"),
    (dict(subsets=0), "subsets"),
    (dict(indices=(np.zeros((2, 3), int), np.zeros((2, 4), int))), "indices"),
    (dict(indices=(np.full((2, 3), 99), np.zeros((2, 3), int))), "out of range"),
])
def test_bad_arguments_are_named(kwargs, message):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=message):
        kernel_inception_distance(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)), **kwargs)


def test_feature_dimensions_must_agree():
    with pytest.raises(ValueError, match="same dim"):
        kernel_inception_distance(np.zeros((10, 3)), np.zeros((10, 4)))
