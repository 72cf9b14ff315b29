"""FID: TorchMetrics' statistics and distance, hand-checked values, and the stable matrix-root trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from medfusion_jax.evaluation.feature_sets import FeatureSet, load_feature_set
from medfusion_jax.metrics.fid import (
    FeatureStats,
    fid_from_features,
    fid_from_stats,
    frechet_distance,
    trace_sqrt_product,
)

DATA = Path(__file__).resolve().parent / "data" / "metrics"


@pytest.fixture(scope="module")
def torch_reference():
    with np.load(DATA / "fid_pr_reference.npz") as data:
        return {k: data[k] for k in data.files}


def test_hand_checked_fid():
    # A = (+-1, +-1): mean 0, covariance 4/3 I (N - 1 = 3). B = (2a + 1, 2b): mean (1, 0), cov 16/3 I.
    # FID = 1 + 2 * (4/3 + 16/3 - 2 * sqrt(4/3 * 16/3)) = 1 + 8/3 = 11/3.
    signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32)
    a = signs
    b = 2 * signs + np.array([1, 0], np.float32)
    stats = FeatureStats.from_features(a)
    np.testing.assert_allclose(stats.cov, np.eye(2) * 4 / 3, atol=1e-12)
    assert fid_from_features(a, b) == pytest.approx(11 / 3, abs=1e-12)


def test_matches_torchmetrics(torch_reference):
    fid = fid_from_features(torch_reference["real"], torch_reference["fake"])
    # TorchMetrics 1.9 (eigenvalues of sigma_r sigma_f) and TorchMetrics 0.11 (scipy sqrtm) in float64.
    assert fid == pytest.approx(float(torch_reference["fid_eigvals"]), abs=1e-9)
    assert fid == pytest.approx(float(torch_reference["fid_sqrtm"]), abs=1e-9)
    # What FrechetInceptionDistance.compute() returns (cast to the features' float32).
    assert np.float32(fid) == np.float32(torch_reference["fid_torchmetrics"])


def test_statistics_match_torchmetrics(torch_reference):
    stats = FeatureStats.from_features(torch_reference["real"])
    np.testing.assert_allclose(stats.mean, torch_reference["mu_real"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(stats.cov, torch_reference["cov_real"], rtol=0, atol=1e-14)


def test_batched_accumulation_equals_one_shot(torch_reference):
    real = torch_reference["real"]
    stats = FeatureStats(dim=real.shape[1])
    for chunk in np.array_split(real, 7):
        stats.update(chunk)
    whole = FeatureStats.from_features(real)
    assert stats.num == whole.num == len(real)
    np.testing.assert_allclose(stats.cov, whole.cov, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n", [20, 300])
def test_fid_with_itself_is_zero(n):
    # n = 20 < dim: singular covariances, the hard case for the matrix root.
    rng = np.random.default_rng(n)
    feats = np.abs(rng.normal(size=(n, 256))).astype(np.float32) * 3
    assert abs(fid_from_features(feats, feats)) < 1e-6


def test_fid_with_itself_is_zero_on_inception_features():
    with np.load(DATA / "inception_reference.npz") as data:
        feats = np.concatenate([data[k] for k in data.files if k.startswith("features_")])
    assert feats.shape[1] == 2048
    assert abs(fid_from_features(feats, feats)) < 1e-6


def test_trace_sqrt_agrees_with_scipy_sqrtm():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(200, 48))
    b = rng.normal(size=(150, 48)) @ rng.normal(size=(48, 48)) * 0.5
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-10)


def test_fid_is_symmetric_and_grows_with_shift():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(100, 8))
    b = rng.normal(size=(100, 8)) * 1.5
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-10)
    assert fid_from_features(a, a + 0.5) == pytest.approx(8 * 0.25, rel=1e-10)
    assert fid_from_features(a, b) < fid_from_features(a, b + 1.0)


def test_frechet_distance_of_identical_gaussians_is_zero():
    cov = np.diag([1.0, 4.0, 9.0])
    assert frechet_distance(np.ones(3), cov, np.ones(3), cov) == pytest.approx(0.0, abs=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="at least 2 samples"):
        _ = FeatureStats.from_features(np.zeros((1, 4))).cov
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_from_stats(FeatureStats.from_features(np.eye(3)), FeatureStats.from_features(np.eye(4)))
    with pytest.raises(ValueError, match=r"expected features \[N, 4\]"):
        FeatureStats(dim=4).update(np.zeros((3, 5)))


def test_saved_files_round_trip(tmp_path, torch_reference):
    real = torch_reference["real"]
    labels = np.array(["a", "b"] * (len(real) // 2), dtype=object)
    FeatureSet.from_features(real, labels).save(tmp_path / "ours.npz")
    ours = load_feature_set(tmp_path / "ours.npz")
    np.testing.assert_array_equal(ours.features, real)
    assert ours.classes == ["a", "b"] and ours.subset("a").num == len(real) // 2

    FeatureStats.from_features(real).save(tmp_path / "stats.npz")
    stats = load_feature_set(tmp_path / "stats.npz")
    assert stats.features is None and stats.num == len(real)
    np.testing.assert_allclose(stats.cov, ours.cov, rtol=1e-12)

    np.savez(tmp_path / "pytorch_fid.npz", mu=ours.mean, sigma=ours.cov)
    pf = load_feature_set(tmp_path / "pytorch_fid.npz")
    assert frechet_distance(pf.mean, pf.cov, ours.mean, ours.cov) == pytest.approx(0.0, abs=1e-9)

    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a statistics file"):
        load_feature_set(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read statistics file"):
        load_feature_set(tmp_path / "junk.npz")
