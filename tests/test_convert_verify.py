"""Every reference golden passes `python -m medfusion_jax.convert verify`, and the command fails when it should."""

import shutil

import numpy as np
import pytest

from medfusion_jax.convert.__main__ import main
from medfusion_jax.convert.verify import verify_folder
from tests.conftest import GOLDENS

FOLDERS = sorted(p.name for p in GOLDENS.iterdir() if (p / "config.json").exists())


def test_all_golden_folders_are_present():
    assert set(FOLDERS) >= {"vae_a", "disc_a", "vaegan_a", "unet_a", "scheduler", "ddim_step", "sampling_unet_a",
                            "vae3d_a", "disc3d_a", "unet3d_a"}


@pytest.mark.parametrize("name", FOLDERS)
def test_golden_within_tolerance(name):
    results, _ = verify_folder(GOLDENS / name)
    bad = [r.line() for r in results if not r.ok]
    assert not bad, "\n".join(bad)
    # Each folder's main outputs are really compared, not silently skipped.
    compared = {r.name for r in results}
    expected = {
        "vae_a": {"out", "out_hor_0", "kl", "z", "decode_of_mean", "rec_loss_L1", "total_loss_MSE"},
        "disc_a": {"logits", "hinge_d_loss", "gen_adv_loss_sum"},
        "vaegan_a": {"generator_loss", "discriminator_loss", "lambda_0", "lambda_1"},
        "unet_a": {"run0_pred", "run1_pred", "run2_pred"},
        "scheduler": {"paper__alphas_cumprod", "ddim_timesteps_150", "q_sample_x_t"},
        "ddim_step": {"noclip_final", "clip_final"},
        "sampling_unet_a": {"run0_final", "run1_final", "run2_final", "run0_eps_guided_per_step"},
        # Volumes (spatial_dims=3): the same classes and keys, with 3-D SSIM and the nearest-exact 3-D target.
        "vae3d_a": {"out", "out_hor_0", "kl", "z", "decode_of_mean", "rec_loss_L1", "total_loss_MSE",
                    "ssim_loss_per_image_out", "ssim_loss_per_image_hor_0", "target_hor_0_nearest_exact"},
        "disc3d_a": {"logits", "hinge_d_loss", "gen_adv_loss_sum"},
        "unet3d_a": {"run0_pred", "run1_pred", "run2_pred"},
    }[name]
    assert expected <= compared


def test_cli_reports_each_output_and_fails_on_wrong_weights(tmp_path, capsys):
    assert main(["verify", str(GOLDENS / "disc_a")]) == 0
    out = capsys.readouterr().out
    assert "logits" in out and "err" in out

    broken = tmp_path / "disc_a"
    shutil.copytree(GOLDENS / "disc_a", broken)
    weights = dict(np.load(broken / "state_dict.npz"))
    weights["outc.conv.bias"] = weights["outc.conv.bias"] + 0.5
    np.savez(broken / "state_dict.npz", **weights)
    assert main(["verify", str(broken)]) == 1
    assert "FAIL logits" in capsys.readouterr().out


def test_cli_names_a_missing_config(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 1
    assert "config.json" in capsys.readouterr().out


def test_verify_refuses_a_golden_without_its_main_outputs(tmp_path, capsys):
    broken = tmp_path / "disc_a"
    shutil.copytree(GOLDENS / "disc_a", broken)
    io = dict(np.load(broken / "io.npz"))
    io = {k: v for k, v in io.items() if not k.startswith("logits")}
    np.savez(broken / "io.npz", **io)
    with pytest.raises(ValueError, match="lacks the main outputs.*logits"):
        verify_folder(broken)
    assert main(["verify", str(broken)]) == 1
    assert "logits" in capsys.readouterr().out


def test_trajectory_steps_are_each_checked_against_their_own_scale():
    """An error of 1e-5 in a late step whose values are ~0.01 hides under a whole-trajectory scale of 10."""
    from medfusion_jax.convert.verify import relative_error, step_relative_error

    ref = np.stack([np.full((2, 3), 10.0), np.full((2, 3), 1.0), np.full((2, 3), 0.01)])
    ours = ref.copy()
    ours[2, 0, 0] += 1e-5
    assert relative_error(ours, ref) < 1e-5  # the old, whole-array normalisation passes it
    error, step = step_relative_error(ours, ref)
    assert step == 2 and error == pytest.approx(1e-3)
    assert step_relative_error(ours[:2], ref)[0] == float("inf")  # a shape mismatch never passes
