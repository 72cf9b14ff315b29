"""Both stages train on a built-in phantom (tiny networks, CPU) and a killed run resumes exactly.

The autoencoder run here leaves the perceptual term out (``perceptual_weight=0``): on two CPU cores the
VGG16 forward/backward costs ~10x the tiny autoencoder; the term itself is checked in
``test_losses_perceptual.py`` and runs in the VAEGAN and sharding tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medfusion_jax.config import AutoencoderConfig, DiffusionConfig
from medfusion_jax.models import VAE, Discriminator, UNet
from medfusion_jax.run_folder import load_trained
from medfusion_jax.training import loop
from medfusion_jax.training.logging import read_metrics
from medfusion_jax.training.stages import run_autoencoder, run_diffusion
from tests.tensorboard_events import read_events
from train import autoencoder as ae_cli
from train import diffusion as diffusion_cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
DATA = ["--dataset", "phantom-cxr", "--image-size", "32", "--num-examples", "512"]
# Three-level networks (32x32 images, 8x8x4 latents): few distinct shapes, so little compiling.
TINY_VAE = ["--hid-chs", "8,16,16", "--emb-channels", "4"]
TINY_UNET = ["--hid-chs", "16,16,32", "--time-emb-dim", "32", "--norm-groups", "8"]


def ae_config(run_dir, *flags) -> AutoencoderConfig:
    return ae_cli.make_config(ae_cli.parse_args([*DATA, *TINY_VAE, "--run-dir", str(run_dir), *flags]))


def diffusion_flags(autoencoder, run_dir, *flags) -> list[str]:
    return ["--autoencoder", str(autoencoder), *DATA, *TINY_UNET, "--run-dir", str(run_dir), *flags]


def diffusion_config(*flags) -> DiffusionConfig:
    return diffusion_cli.make_config(diffusion_cli.parse_args(list(flags)))


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl")}


def window_mean(records: dict[int, float], steps) -> float:
    return float(np.mean([records[s] for s in steps]))


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("autoencoder")
    config = ae_config(run_dir, "--steps", "200", "--batch-size", "8", "--perceptual-weight", "0",
                       "--log-every", "10", "--checkpoint-every", "100", "--image-every", "200")
    result = run_autoencoder(config, handle_signals=False)
    assert result.final_step == 200 and not result.interrupted
    return run_dir


def test_autoencoder_loss_falls_and_run_is_reported(autoencoder_run):
    records = losses(autoencoder_run)
    first, last = window_mean(records, (10, 20)), window_mean(records, (190, 200))
    assert last < 0.5 * first, (first, last)
    assert sorted(int(p.name) for p in (autoencoder_run / "checkpoints").iterdir() if p.name.isdigit()) == [100, 200]
    assert (autoencoder_run / "images" / "step_0000200.png").is_file()
    assert (autoencoder_run / "loss_curve.png").is_file()
    (events,) = autoencoder_run.glob("events.out.tfevents.*")
    logged = read_events(events)
    assert [step for step, _ in logged.scalars["train/loss"]] == list(range(10, 201, 10))  # every --log-every
    assert [step for step, *_ in logged.images["reconstructions"]] == [200]
    saved = json.loads((autoencoder_run / "config.json").read_text())
    assert saved["pixel_loss"] == "mse" and saved["model"]["emb_channels"] == 4


def test_load_trained_autoencoder(autoencoder_run):
    modules, config = load_trained(autoencoder_run)
    assert isinstance(modules["vae"], VAE) and isinstance(config, AutoencoderConfig)
    modules_100, _ = load_trained(autoencoder_run / "checkpoints" / "100")
    kernel = modules["vae"].outc.conv.kernel[...]
    assert float(np.abs(kernel).max()) > 0  # trained away from its zero initialisation
    assert not np.allclose(kernel, modules_100["vae"].outc.conv.kernel[...])
    with pytest.raises(FileNotFoundError, match="not a training run directory"):
        load_trained(autoencoder_run / "images")


# Images encoded on the fly, random flips and an EMA: every part of the state a resume must restore.
DIFFUSION_FLAGS = ["--batch-size", "8", "--ema", "--flips", "hv", "--log-every", "1"]


@pytest.fixture(scope="module")
def diffusion_run(autoencoder_run, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("diffusion")
    config = diffusion_config(*diffusion_flags(autoencoder_run, run_dir, *DIFFUSION_FLAGS, "--steps", "300",
                                               "--checkpoint-every", "150", "--image-every", "300",
                                               "--sample-steps", "4"))
    assert config.data.image_size == 32  # taken from the autoencoder run
    result = run_diffusion(config, handle_signals=False)
    assert result.final_step == 300
    return run_dir


def test_diffusion_loss_falls_and_run_is_loadable(diffusion_run):
    records = losses(diffusion_run)
    first, last = window_mean(records, range(1, 31)), window_mean(records, range(271, 301))
    assert last < 0.85 * first, (first, last)
    assert (diffusion_run / "images" / "step_0000300.png").is_file()
    modules, config = load_trained(diffusion_run)
    assert isinstance(modules["unet"], UNet) and isinstance(modules["vae"], VAE)
    assert isinstance(config, DiffusionConfig) and config.ema and modules["unet"].num_classes == 2
    raw = load_trained(diffusion_run, use_ema=False)[0]["unet"]
    assert not np.allclose(modules["unet"].outc.conv.kernel[...], raw.outc.conv.kernel[...])


KILL_SCRIPT = """
import os, signal, sys
from medfusion_jax.training import loop
calls = [0]
real = loop.global_batch
def global_batch(local, mesh):
    calls[0] += 1
    if calls[0] == int(os.environ["KILL_AT_BATCH"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(local, mesh)
loop.global_batch = global_batch
from train import diffusion
sys.exit(diffusion.main(sys.argv[1:]))
"""


def test_killed_and_interrupted_runs_resume_with_identical_losses(autoencoder_run, diffusion_run, tmp_path,
                                                                   monkeypatch):
    """A run SIGKILLed after 10 steps, resumed, stopped by Ctrl-C 2 steps later and resumed again has
    the losses of the uninterrupted run (the diffusion fixture, same seed), step for step."""
    args = diffusion_flags(autoencoder_run, tmp_path, *DIFFUSION_FLAGS, "--steps", "14", "--checkpoint-every", "4",
                           "--image-every", "0")
    env = dict(os.environ, KILL_AT_BATCH="11", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # Step 10's metrics are read while step 11 runs, so 9 is the last record before the kill.
    assert max(losses(tmp_path)) == 9
    assert 4 in {int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()}

    calls = [0]
    real = loop.global_batch

    def interrupting_global_batch(local, mesh):
        calls[0] += 1
        if calls[0] == 2:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while the second step after the restart runs
        return real(local, mesh)

    monkeypatch.setattr(loop, "global_batch", interrupting_global_batch)
    stopped = run_diffusion(diffusion_config(*args))
    assert stopped.interrupted and stopped.start_step in (4, 8)
    assert stopped.final_step == stopped.start_step + 2
    monkeypatch.setattr(loop, "global_batch", real)
    finished = run_diffusion(diffusion_config(*args), handle_signals=False)
    assert finished.start_step == stopped.final_step and finished.final_step == 14

    expected, got = losses(diffusion_run), losses(tmp_path)
    assert sorted(got) == list(range(1, 15))
    np.testing.assert_allclose([got[s] for s in range(1, 15)], [expected[s] for s in range(1, 15)], rtol=1e-6)


def test_vaegan_stage_from_a_trained_autoencoder(autoencoder_run, tmp_path):
    config = ae_config(tmp_path, "--gan", "--init-from", str(autoencoder_run), "--steps", "3", "--batch-size", "4",
                       "--log-every", "1", "--image-every", "0", "--checkpoint-every", "3", "--perceptual-weight", "0")
    run_autoencoder(config, handle_signals=False)
    records = read_metrics(tmp_path / "metrics.jsonl")
    for key in ("loss", "disc_loss", "lambda_0", "lambda_1", "gan_loss_raw_0", "rec_loss_1"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert all(r["lambda_0"] > 0 for r in records)
    modules, _ = load_trained(tmp_path)
    assert set(modules) == {"vae", "discriminator_0", "discriminator_1"}
    assert isinstance(modules["discriminator_1"], Discriminator)
    # The discriminators' zero-initialised output layer has been trained; the autoencoder started from
    # the trained one.
    assert float(np.abs(modules["discriminator_0"].outc.conv.kernel[...]).max()) > 0
    start = load_trained(autoencoder_run)[0]["vae"]
    assert np.allclose(modules["vae"].outc.conv.kernel[...], start.outc.conv.kernel[...], atol=1e-4)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    # The settings of the autoencoder fixture, so that its compiled step is reused.
    config = ae_config(tmp_path, "--steps", "8", "--batch-size", "8", "--perceptual-weight", "0",
                       "--checkpoint-every", "2", "--log-every", "1", "--image-every", "0")
    calls = [0]
    real = loop.global_batch

    def poisoned(local, mesh):
        calls[0] += 1
        if calls[0] == 5:
            local = dict(local, image=np.full_like(local["image"], np.nan))
        return real(local, mesh)

    monkeypatch.setattr(loop, "global_batch", poisoned)
    with pytest.raises(loop.NonFiniteLossError, match="loss is nan at step 5") as err:
        run_autoencoder(config, handle_signals=False)
    assert err.value.last_checkpoint == 4
    assert max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == 4
    assert max(losses(tmp_path)) == 4
