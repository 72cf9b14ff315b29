"""PyTorch state_dict <-> our modules: key names, layouts, and errors that name every bad key."""

import json

import numpy as np
import pytest
from flax import nnx

from medfusion_jax.convert.reference import build_from_reference
from medfusion_jax.convert.state_dict import StateDictMismatch, load_state_dict, to_state_dict, torch_keys
from tests.conftest import GOLDENS


@pytest.mark.parametrize("name", ["vae_a", "disc_a", "vaegan_a", "unet_a"])
def test_keys_and_shapes_equal_the_reference_state_dict(name):
    config = json.loads((GOLDENS / name / "config.json").read_text())
    module = build_from_reference(config["class"], config["ctor_kwargs"])
    reference = {key: tuple(shape) for key, shape, _ in config["state_dict_keys"]}
    assert torch_keys(module) == reference


def test_round_trip_preserves_every_weight():
    config = json.loads((GOLDENS / "unet_a" / "config.json").read_text())
    weights = dict(np.load(GOLDENS / "unet_a" / "state_dict.npz"))
    module = build_from_reference(config["class"], config["ctor_kwargs"], nnx.Rngs(7))
    load_state_dict(module, weights)
    exported = to_state_dict(module)
    assert exported.keys() == weights.keys()
    for key in weights:
        np.testing.assert_array_equal(exported[key], weights[key], err_msg=key)


def test_mismatch_names_every_missing_unexpected_and_misshaped_key():
    config = json.loads((GOLDENS / "disc_a" / "config.json").read_text())
    weights = dict(np.load(GOLDENS / "disc_a" / "state_dict.npz"))
    module = build_from_reference(config["class"], config["ctor_kwargs"])
    before = to_state_dict(module)
    del weights["inc.norm.bias"]
    weights["encoder.9.conv.weight"] = np.zeros(3, np.float32)
    weights["outc.conv.weight"] = np.zeros((1, 64, 1, 1), np.float32)
    with pytest.raises(StateDictMismatch) as err:
        load_state_dict(module, weights, source="my.ckpt")
    message = str(err.value)
    assert "my.ckpt" in message
    assert "missing keys (1): inc.norm.bias" in message
    assert "unexpected keys (1): encoder.9.conv.weight" in message
    assert "outc.conv.weight: expected (1, 64, 3, 3), got (1, 64, 1, 1)" in message
    # Nothing was changed by the failed load.
    after = to_state_dict(module)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_unsupported_reference_options_are_named():
    with pytest.raises(ValueError, match="spatial_dims=1 is not supported"):
        build_from_reference("VAE", {"spatial_dims": 1})
    with pytest.raises(ValueError, match="use_attention='linear'"):
        build_from_reference("VAE", {"use_attention": "linear", "hid_chs": [8, 8, 8, 8]})
    with pytest.raises(ValueError, match=r"unsupported constructor arguments \['bogus'\]"):
        build_from_reference("Discriminator", {"bogus": 1})
    with pytest.raises(ValueError, match="unknown reference class"):
        build_from_reference("medical_diffusion.Nope", {})
