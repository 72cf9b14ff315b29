"""Original Medfusion checkpoints (torch.save / Lightning format) load into our modules without torch."""

import json
from collections import OrderedDict

import jax.numpy as jnp
import numpy as np
import pytest

from medfusion_jax.convert.checkpoint import load_reference_weights, module_from_checkpoint, read_checkpoint
from medfusion_jax.convert.reference import build_from_reference
from medfusion_jax.convert.state_dict import StateDictMismatch
from medfusion_jax.convert.verify import relative_error, to_nchw, to_nhwc
from medfusion_jax.torch_file import TorchFileError
from tests.conftest import GOLDENS
from tests.torch_writer import save_torch_file


def golden(name):
    config = json.loads((GOLDENS / name / "config.json").read_text())
    weights = OrderedDict(np.load(GOLDENS / name / "state_dict.npz"))
    io = np.load(GOLDENS / name / "io.npz")
    return config, weights, io


def test_lightning_checkpoint_builds_and_loads_the_vae(tmp_path):
    config, weights, io = golden("vae_a")
    # What Lightning writes: the network weights, the frozen LPIPS perceiver, and the constructor kwargs.
    state = OrderedDict(weights)
    state["perceiver.loss_fn.net.slice1.0.weight"] = np.zeros((64, 3, 3, 3), np.float32)
    path = tmp_path / "last.ckpt"
    save_torch_file({"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.8.6",
                     "state_dict": state, "hyper_parameters": dict(config["ctor_kwargs"])}, path)
    vae = module_from_checkpoint(path, "VAE")
    out, _, _ = vae(to_nhwc(io["x"]), noise=to_nhwc(io["eps"]))
    assert relative_error(to_nchw(out), io["out"]) < 1e-4


def test_bare_state_dict_with_prefix(tmp_path):
    config, weights, io = golden("unet_a")
    path = tmp_path / "pipeline.pt"
    save_torch_file(OrderedDict(("noise_estimator." + k, v) for k, v in weights.items()), path)
    unet = build_from_reference(config["class"], config["ctor_kwargs"])
    load_reference_weights(unet, path, prefix="noise_estimator.")
    pred = unet(to_nhwc(io["run0_x_t"]), jnp.asarray(io["run0_t"]), jnp.asarray(io["run0_cond"]))
    assert relative_error(to_nchw(pred), io["run0_pred"]) < 1e-4


def test_foreign_checkpoint_names_the_keys(tmp_path):
    config, weights, _ = golden("disc_a")
    path = tmp_path / "other.pt"
    save_torch_file({"classifier.weight": np.zeros((2, 4), np.float32)}, path)
    with pytest.raises(StateDictMismatch, match="other.pt") as err:
        module_from_checkpoint(path, "Discriminator", hyper_parameters=config["ctor_kwargs"])
    assert "missing keys (18)" in str(err.value) and "classifier.weight" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"PK\x03\x04 truncated zip", b"not a checkpoint\n"])
def test_corrupt_or_truncated_files_give_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(TorchFileError, match="bad.ckpt"):
        read_checkpoint(path)


def test_truncated_real_checkpoint(tmp_path):
    _, weights, _ = golden("disc_a")
    path = tmp_path / "full.pt"
    save_torch_file(weights, path)
    data = path.read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(TorchFileError, match="half.pt"):
        read_checkpoint(tmp_path / "half.pt")
    save_torch_file([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(TorchFileError, match="expected a state_dict"):
        read_checkpoint(tmp_path / "list.pt")
