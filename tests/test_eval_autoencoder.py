"""Autoencoder reconstruction metrics (spec 11.2): the library function and ``python -m eval.autoencoder``.

A two-step autoencoder run on ``phantom-cxr`` (tiny network, 32x32, no perceptual term) provides real
training output; it is evaluated at 176x176 (the fully convolutional VAE takes any size divisible by
its downsampling), the smallest size TorchMetrics' 5-scale MS-SSIM accepts. The same weights written
as an original Medfusion Lightning checkpoint (VAE, and VAEGAN) must give the same numbers. Volumes:
``phantom-brain`` at 16^3, through the library function (the command on a 3-D run: the tiny volume demo,
tests/test_eval_demo_volumes.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from eval import autoencoder as cli
from medfusion_jax.convert.autoencoder import CheckpointError, load_autoencoder
from medfusion_jax.convert.state_dict import to_state_dict, torch_keys
from medfusion_jax.data import make_dataset, normalize
from medfusion_jax.evaluation import reconstruction
from medfusion_jax.evaluation.reconstruction import evaluate_reconstruction, msssim_supported
from medfusion_jax.models import Discriminator
from medfusion_jax.pretrained.lpips import LPIPS
from medfusion_jax.run_folder import read_model_json
from medfusion_jax.training.stages import run_autoencoder
from tests.torch_writer import save_torch_file
from train import autoencoder as ae_cli

SIZE, N, BATCH = 176, 4, 4
EVAL = ["--dataset", "phantom-cxr", "--image-size", str(SIZE), "--num-examples", str(N),
        "--batch-size", str(BATCH), "--no-progress"]
VOLUME_SIZE = 16  # phantom-brain volumes, 16^3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ae-run")
    args = ae_cli.parse_args([
        "--dataset", "phantom-cxr", "--image-size", "32", "--num-examples", "16", "--hid-chs", "8,16,16",
        "--emb-channels", "4", "--deep-supervision", "1", "--run-dir", str(run), "--steps", "2",
        "--batch-size", "4", "--perceptual-weight", "0", "--log-every", "1", "--checkpoint-every", "2",
        "--image-every", "1000",
    ])
    result = run_autoencoder(ae_cli.make_config(args), handle_signals=False)
    assert result.final_step == 2
    return run


@pytest.fixture(scope="module")
def run_eval(run_dir, tmp_path_factory) -> Path:
    """``python -m eval.autoencoder`` on the run directory: its output folder."""
    out = tmp_path_factory.mktemp("eval-run")
    assert cli.main(["--checkpoint", str(run_dir), *EVAL, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    source = make_dataset("phantom-cxr", split="validation", image_size=SIZE, num_examples=N)
    return np.stack([source[i]["image"] for i in range(N)])


@pytest.fixture(scope="module")
def volumes() -> np.ndarray:
    source = make_dataset("phantom-brain", split="validation", image_size=VOLUME_SIZE, num_examples=3)
    return np.stack([source[i]["image"] for i in range(3)])


@pytest.fixture(scope="module")
def lpips_model() -> LPIPS:
    return LPIPS()


def reference_kwargs(run: Path) -> dict:
    """The run's VAE as the reference's constructor arguments (what Lightning stores)."""
    kw = dict(read_model_json(run)["modules"]["vae"]["kwargs"])
    kw["norm_name"] = ["GROUP", {"num_groups": kw.pop("norm_groups"), "affine": True}]
    return dict(kw, spatial_dims=2, use_attention="none", embedding_loss_weight=1e-6)


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_metrics(out: Path) -> dict:
    return json.loads((out / "autoencoder_metrics.json").read_text())


# -- the library function -------------------------------------------------------------------------


def test_identity_is_perfect_and_noise_is_worse(images, lpips_model):
    perfect = evaluate_reconstruction(images, lambda x, keys: x, batch_size=BATCH, lpips_model=lpips_model)
    np.testing.assert_allclose(perfect.ms_ssim, 1.0, atol=1e-5)
    np.testing.assert_array_equal(perfect.mse, 0.0)
    np.testing.assert_allclose(perfect.lpips, 0.0, atol=1e-6)
    assert perfect.summary()["lpips_score"]["mean"] == pytest.approx(1.0, abs=1e-6)

    def noisy(x, keys):
        return x + 0.3 * jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(keys)

    worse = evaluate_reconstruction(images, noisy, batch_size=BATCH, lpips_model=lpips_model)
    assert np.all(worse.ms_ssim < 0.95) and np.all(worse.ms_ssim >= 0)
    assert np.all(worse.mse > 1e-3) and np.all(worse.lpips > 0.05)
    # Per-image keys: the numbers do not depend on the batch size (the last batch is padded).
    again = evaluate_reconstruction(images, noisy, batch_size=3, lpips_model=lpips_model)
    np.testing.assert_allclose(again.mse, worse.mse, rtol=1e-6)

    summary = worse.summary()
    assert summary["num_images"] == N and summary["image_shape"] == [SIZE, SIZE, 3]
    assert summary["mse_x1e5"]["mean"] == pytest.approx(summary["mse"]["mean"] * 1e5)
    assert summary["mse"]["std"] == pytest.approx(np.std(worse.mse, ddof=1))
    assert summary["lpips_score"]["mean"] == pytest.approx(1 - summary["lpips"]["mean"])
    assert worse.comparison_grid().shape == (2 + 2 * (SIZE + 2), 2 + N * (SIZE + 2), 3)


def test_small_images_leave_ms_ssim_out():
    assert not msssim_supported(160, 256) and msssim_supported(176, 176)
    small = np.full((3, 32, 32, 3), 100, np.uint8)
    result = evaluate_reconstruction(small, lambda x, keys: x, batch_size=2, with_lpips=False)
    assert result.ms_ssim is None and result.lpips is None
    summary = result.summary()
    assert summary["ms_ssim"] is None and "MS-SSIM left out" in summary["notes"][0]


def test_volumes_identity_and_a_known_perturbation(volumes, monkeypatch):
    # LPIPS is 2-D only: for volumes it is neither loaded nor computed, and a note says so.
    monkeypatch.setattr(reconstruction, "LPIPS", lambda: pytest.fail("LPIPS loaded for volumes"))
    perfect = evaluate_reconstruction(volumes, lambda x, keys: x, batch_size=2)
    np.testing.assert_allclose(perfect.ssim, 1.0, atol=1e-5)
    np.testing.assert_array_equal(perfect.mse, 0.0)
    assert perfect.lpips is None and perfect.ms_ssim is None and perfect.volumes
    summary = perfect.summary()
    assert summary["num_images"] == 3 and summary["image_shape"] == [VOLUME_SIZE] * 3 + [1]
    assert summary["lpips"] is None and summary["ssim"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert "MS-SSIM left out: 16x16x16 volumes" in summary["notes"][0]
    assert any(n.startswith("LPIPS left out") and "2-D" in n for n in summary["notes"])

    # A fixed checkerboard of +-0.2 (in [-1, 1]), clamped like any reconstruction: MSE as numpy has it.
    d, h, w = np.indices((VOLUME_SIZE,) * 3)
    delta = np.where((d + h + w) % 2, 0.2, -0.2).astype(np.float32)[..., None]
    worse = evaluate_reconstruction(volumes, lambda x, keys: x + delta, batch_size=2)
    real = (normalize(volumes).astype(np.float64) + 1) / 2
    fake = (np.clip(normalize(volumes) + delta, -1, 1).astype(np.float64) + 1) / 2
    # rtol: XLA:CPU sums the 4096 float32 squares in its own order (measured 2e-5 from float64).
    np.testing.assert_allclose(worse.mse, ((fake - real) ** 2).mean(axis=(1, 2, 3, 4)), rtol=1e-4)
    assert np.all(worse.ssim < 0.9) and np.all(worse.ssim > 0)
    # The picture shows each volume by its three mid-slices: originals over reconstructions.
    assert worse.comparison_grid().shape == (2 + 2 * (VOLUME_SIZE + 2), 2 + 3 * (3 * VOLUME_SIZE + 2), 1)


# -- the command line ---------------------------------------------------------------------------------


def test_cli_on_a_training_run(run_dir, run_eval, tmp_path, capsys):
    payload = read_metrics(run_eval)
    metrics = payload["metrics"]
    assert payload["checkpoint"]["kind"] == "run" and payload["checkpoint"]["step"] == 2
    assert payload["split"] == "validation" and payload["image_size"] == SIZE
    assert metrics["num_images"] == N
    assert 0 <= metrics["ms_ssim"]["mean"] <= 1 and metrics["mse"]["mean"] >= 0
    assert all(np.isfinite(v) for k in ("ms_ssim", "mse", "lpips") for v in payload["per_image"][k])
    assert 0 <= min(payload["per_image"]["ms_ssim"]) and max(payload["per_image"]["ms_ssim"]) <= 1
    with Image.open(run_eval / "reconstructions.png") as png:
        assert png.size == (2 + N * (SIZE + 2), 2 + 2 * (SIZE + 2))
    # A checkpoint directory works too, gives the same numbers, and prints the table.
    out = tmp_path / "eval"
    code, stdout, _ = run_cli(["--checkpoint", str(run_dir / "checkpoints" / "2"), *EVAL, "--out", str(out)], capsys)
    assert code == 0 and read_metrics(out)["per_image"] == payload["per_image"]
    assert "MS-SSIM" in stdout and "MSE (x1e-5)" in stdout and "LPIPS score" in stdout
    assert 0 < metrics["ssim"]["mean"] <= 1 and len(payload["per_image"]["ssim"]) == N


@pytest.mark.parametrize("reference_class", ["VAE", "VAEGAN"])
def test_original_checkpoint_gives_the_same_numbers(run_dir, run_eval, tmp_path, capsys, reference_class):
    vae, _ = load_autoencoder(run_dir)
    kwargs = reference_kwargs(run_dir)
    if reference_class == "VAE":
        state = dict(to_state_dict(vae))
        state["perceiver.loss_fn.net.slice1.0.weight"] = np.zeros((8, 3, 3, 3), np.float32)  # ignored
    else:
        # The inner VAE's keys under vqvae., and (zero) weights for the two discriminators.
        disc = nnx.eval_shape(lambda: Discriminator(3, tuple(kwargs["hid_chs"]), tuple(kwargs["kernel_sizes"]),
                                                    tuple(kwargs["strides"]), 8, rngs=nnx.Rngs(0)))
        state = {f"vqvae.{k}": v for k, v in to_state_dict(vae).items()}
        state.update({f"discriminator.{d}.{k}": np.zeros(shape, np.float32)
                      for d in range(2) for k, shape in torch_keys(disc).items()})
        state["vqvae.perceiver.loss_fn.net.slice1.0.weight"] = np.zeros((8, 3, 3, 3), np.float32)  # ignored
        kwargs = dict(kwargs, start_gan_train_step=-1, gan_loss_weight=1.0)
    ckpt = tmp_path / "last.ckpt"
    save_torch_file({"epoch": 0, "global_step": 2, "state_dict": state, "hyper_parameters": kwargs}, ckpt)

    loaded, info = load_autoencoder(ckpt)
    assert info["kind"] == "original" and info["reference_class"] == reference_class

    out = tmp_path / "ckpt"
    code, _, _ = run_cli(["--checkpoint", str(ckpt), *EVAL, "--out", str(out)], capsys)
    assert code == 0
    a, b = read_metrics(run_eval)["per_image"], read_metrics(out)["per_image"]
    for key in ("ms_ssim", "mse", "lpips"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-7)


def test_bad_checkpoints_exit_2_naming_the_path(tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    code, _, err = run_cli(["--checkpoint", str(missing), *EVAL, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and str(missing) in err and len(err.strip().splitlines()) == 1
    corrupt = tmp_path / "bad.ckpt"
    corrupt.write_bytes(b"not a checkpoint\n")
    code, _, err = run_cli(["--checkpoint", str(corrupt), *EVAL], capsys)
    assert code == 2 and str(corrupt) in err and len(err.strip().splitlines()) == 1
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    code, _, err = run_cli(["--checkpoint", str(not_a_run), *EVAL], capsys)
    assert code == 2 and str(not_a_run) in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="nope.ckpt"):
        load_autoencoder(missing)
    assert not (tmp_path / "o").exists()
