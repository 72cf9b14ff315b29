"""Both stages train on volumes (``phantom-brain``, 16^3, tiny networks) with the same commands, run
folders, checkpoints and resume as images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval import sample as sample_cli
from medfusion_jax.images import read_nifti
from medfusion_jax.models import VAE, UNet
from medfusion_jax.run_folder import load_trained
from medfusion_jax.training.logging import read_metrics
from medfusion_jax.training.stages import run_autoencoder, run_diffusion
from train import autoencoder as ae_cli
from train import diffusion as diffusion_cli

pytestmark = pytest.mark.slow
DATA = ["--dataset", "phantom-brain", "--image-size", "16", "--num-examples", "64"]
TINY_VAE = ["--hid-chs", "8,8,8", "--emb-channels", "4"]  # 16^3 volumes -> 4 x 4^3 latents
TINY_UNET = ["--hid-chs", "16,16,32", "--time-emb-dim", "32", "--norm-groups", "8"]


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl")}


def ae_config(run_dir, *flags):
    return ae_cli.make_config(ae_cli.parse_args([*DATA, *TINY_VAE, "--run-dir", str(run_dir), "--batch-size", "4",
                                                 "--log-every", "1", *flags]))


@pytest.fixture(scope="module")
def volume_autoencoder(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("volume_autoencoder")
    result = run_autoencoder(ae_config(run_dir, "--steps", "60", "--checkpoint-every", "30", "--image-every", "60"),
                             handle_signals=False)
    assert result.final_step == 60
    return run_dir


def test_volume_autoencoder_learns_and_is_stored_as_a_3d_network(volume_autoencoder):
    records = losses(volume_autoencoder)
    first, last = np.mean([records[s] for s in range(1, 6)]), np.mean([records[s] for s in range(56, 61)])
    assert last < 0.6 * first, (first, last)
    config = json.loads((volume_autoencoder / "config.json").read_text())
    assert config["model"]["spatial_dims"] == 3 and config["model"]["in_channels"] == 1
    assert config["perceptual_weight"] == 0 and config["data"]["flips"] == "h"
    modules, _ = load_trained(volume_autoencoder)
    assert isinstance(modules["vae"], VAE) and modules["vae"].spatial_dims == 3
    assert modules["vae"].inc.block_seq[0].basic_block.conv.kernel.shape == (3, 3, 3, 1, 8)
    # The preview shows each volume by its three orthogonal mid-slices: 8 inputs over 8 reconstructions.
    preview = np.asarray(Image.open(volume_autoencoder / "images" / "step_0000060.png"))
    assert preview.shape[:2] == (2 * (16 + 2) + 2, 8 * (3 * 16 + 2) + 2)


def test_volume_autoencoder_resumes_with_identical_losses(volume_autoencoder, tmp_path):
    """Stopped after 3 steps and resumed to 6, the losses are those of the uninterrupted fixture run; the
    resumed part rematerialises its blocks (``--remat``), which changes memory, not values."""
    first = run_autoencoder(ae_config(tmp_path, "--steps", "3", "--checkpoint-every", "3", "--image-every", "0"),
                            handle_signals=False)
    resumed = run_autoencoder(ae_config(tmp_path, "--steps", "6", "--checkpoint-every", "3", "--image-every", "0",
                                        "--remat"), handle_signals=False)
    assert first.final_step == 3 and resumed.start_step == 3 and resumed.final_step == 6
    expected, got = losses(volume_autoencoder), losses(tmp_path)
    np.testing.assert_allclose([got[s] for s in range(1, 7)], [expected[s] for s in range(1, 7)], rtol=1e-6)


def test_volume_diffusion_trains_on_cached_latents_and_samples_volumes(volume_autoencoder, tmp_path):
    args = ["--autoencoder", str(volume_autoencoder), *DATA, *TINY_UNET, "--run-dir", str(tmp_path),
            "--cache-latents", "--steps", "20", "--batch-size", "8", "--log-every", "1", "--checkpoint-every", "20",
            "--image-every", "20", "--samples-per-class", "2", "--sample-steps", "3"]
    result = run_diffusion(diffusion_cli.make_config(diffusion_cli.parse_args(args)), handle_signals=False)
    assert result.final_step == 20
    records = losses(tmp_path)
    assert np.mean([records[s] for s in range(16, 21)]) < np.mean([records[s] for s in range(1, 6)])
    modules, config = load_trained(tmp_path)
    assert isinstance(modules["unet"], UNet) and modules["unet"].spatial_dims == 3
    assert config.model.spatial_dims == 3
    assert np.load(tmp_path / "latents" / "mean.npy").shape == (64, 4, 4, 4, 4)
    # Two sampled volumes per class, shown by their mid-slices.
    preview = np.asarray(Image.open(tmp_path / "images" / "step_0000020.png"))
    assert preview.shape[:2] == (2 * (16 + 2) + 2, 2 * (3 * 16 + 2) + 2)

    # eval.sample writes volumes as NIfTI files, the grid as mid-slices, and completes an interrupted set.
    out = tmp_path / "samples"
    sample = ["--checkpoint", str(tmp_path), "--out", str(out), "--steps", "3", "--quiet"]
    assert sample_cli.main([*sample, "--num-per-class", "1"]) == 0
    first = (out / "ventriculomegaly" / "000000.nii.gz").stat().st_mtime_ns
    assert sample_cli.main([*sample, "--num-per-class", "2"]) == 0
    assert (out / "ventriculomegaly" / "000000.nii.gz").stat().st_mtime_ns == first  # kept, not redrawn
    manifest = json.loads((out / "samples.json").read_text())
    assert manifest["counts"] == {"normal ventricles": 2, "ventriculomegaly": 2}
    volume = read_nifti(out / "ventriculomegaly" / "000001.nii.gz")
    assert volume.shape == (16, 16, 16, 1) and volume.dtype == np.uint8
    assert np.asarray(Image.open(out / "grid.png")).shape[:2] == (2 * (16 + 2) + 2, 2 * (3 * 16 + 2) + 2)


def test_a_diffusion_run_refuses_an_autoencoder_of_the_other_kind(volume_autoencoder, tmp_path):
    args = ["--autoencoder", str(volume_autoencoder), "--dataset", "phantom-cxr", "--image-size", "16",
            "--num-examples", "8", *TINY_UNET, "--run-dir", str(tmp_path), "--steps", "1"]
    with pytest.raises(ValueError, match="trained on volumes, and --dataset phantom-cxr holds images"):
        run_diffusion(diffusion_cli.make_config(diffusion_cli.parse_args(args)), handle_signals=False)
