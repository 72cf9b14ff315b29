"""``python -m medfusion_jax.convert medfusion``: original Lightning checkpoints -> a run directory.

The fixtures are Lightning-style checkpoints written without torch: tiny reference-configured networks
(random weights, output layers perturbed so that nothing is trivially zero) exported with
``to_state_dict`` under the reference's key names and wrapped with the reference's constructor kwargs.
``tests/test_eval_sample_checkpoint.py`` samples from the converted runs.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from medfusion_jax.config import AutoencoderConfig, DiffusionConfig
from medfusion_jax.convert.__main__ import main as convert_main
from medfusion_jax.convert.medfusion import ConversionError, convert_medfusion
from medfusion_jax.convert.reference import build_from_reference
from medfusion_jax.convert.state_dict import to_state_dict
from medfusion_jax.diffusion.schedule import make_schedule
from medfusion_jax.run_folder import load_trained, read_model_json, split_params
from tests.torch_writer import save_torch_file

IMAGE_SIZE = 16  # VAE downsampling 2 -> 8x8x4 latents
VAE_HP = dict(in_channels=3, out_channels=3, emb_channels=4, spatial_dims=2, hid_chs=[8, 8], kernel_sizes=[3, 3],
              strides=[1, 2], deep_supervision=1, use_attention="none", embedding_loss_weight=1e-6,
              perceiver="medical_diffusion.loss.perceivers.LPIPS")
UNET_HP = dict(in_ch=4, out_ch=4, spatial_dims=2, hid_chs=[16, 16, 32], kernel_sizes=[3, 3, 3], strides=[1, 2, 2],
               norm_name=["GROUP", {"num_groups": 8, "affine": True}], time_embedder="TimeEmbbeding",
               time_embedder_kwargs={"emb_dim": 32}, cond_embedder="LabelEmbedder",
               cond_embedder_kwargs={"emb_dim": 32, "num_classes": 2}, deep_supervision=False, use_res_block=True,
               estimate_variance=False, use_self_conditioning=False, use_attention="none")
SCHEDULER_HP = dict(timesteps=1000, beta_start=0.002, beta_end=0.02, schedule_strategy="scaled_linear")
PIPELINE_HP = dict(
    noise_scheduler="medical_diffusion.models.noise_schedulers.gaussian_scheduler.GaussianNoiseScheduler",
    noise_scheduler_kwargs=SCHEDULER_HP,
    noise_estimator="medical_diffusion.models.estimators.unet2.UNet", noise_estimator_kwargs=UNET_HP,
    latent_embedder="medical_diffusion.models.embedders.latent_embedders.VAE",
    latent_embedder_checkpoint="runs/chest_vaegan/last_vae.ckpt", estimator_objective="x_T",
    estimate_variance=False, use_self_conditioning=False, classifier_free_guidance_dropout=0.5, num_samples=4,
    do_input_centering=False, clip_x0=False, use_ema=False, ema_kwargs={}, optimizer_kwargs={"lr": 1e-4},
    loss_kwargs={}, sample_every_n_steps=1000,
)
# The frozen LPIPS network of the reference autoencoder's loss: in its state_dict, never converted.
PERCEIVER = {"perceiver.loss_fn.net.slice1.0.weight": np.zeros((4, 3, 3, 3), np.float32)}


def _rngs(seed):
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))  # fast eager init (the distribution does not matter)


@functools.cache
def reference_modules(unet_seed: int = 1):
    """(VAE, UNet) as the reference would hold them, with non-trivial output layers."""
    vae = build_from_reference("VAE", VAE_HP, _rngs(0))
    vae.outc.conv.kernel[...] = 0.05 * jax.random.normal(jax.random.key(2), vae.outc.conv.kernel.shape)
    unet = build_from_reference("UNet", UNET_HP, _rngs(unet_seed))
    unet.outc.conv.kernel[...] = 0.1 * jax.random.normal(jax.random.key(3 + unet_seed), unet.outc.conv.kernel.shape)
    return vae, unet


def vae_checkpoint(path: Path, *, state=None, hparams=None) -> Path:
    vae, _ = reference_modules()
    state = OrderedDict({**to_state_dict(vae), **PERCEIVER}) if state is None else state
    save_torch_file({"epoch": 2, "global_step": 100, "pytorch-lightning_version": "1.8.6", "state_dict": state,
                     "hyper_parameters": dict(VAE_HP if hparams is None else hparams)}, path)
    return path


def pipeline_state(*, ema: bool = False) -> OrderedDict:
    vae, unet = reference_modules()
    schedule = make_schedule()
    state = OrderedDict()
    state.update(("noise_estimator." + k, v) for k, v in to_state_dict(unet).items())
    state.update(("latent_embedder." + k, v) for k, v in {**to_state_dict(vae), **PERCEIVER}.items())
    state["noise_scheduler.timesteps_array"] = np.arange(1000, dtype=np.int64)
    for name in ("betas", "alphas_cumprod", "posterior_mean_coef1"):
        state["noise_scheduler." + name] = np.asarray(getattr(schedule, name))
    if ema:
        _, other = reference_modules(unet_seed=7)
        state.update(("ema_model.averaged_model." + k, v) for k, v in to_state_dict(other).items())
    return state


def pipeline_checkpoint(path: Path, *, state=None, **hparams) -> Path:
    state = pipeline_state(ema=hparams.get("use_ema", False)) if state is None else state
    save_torch_file({"epoch": 5, "global_step": 300, "pytorch-lightning_version": "1.8.6", "state_dict": state,
                     "hyper_parameters": {**PIPELINE_HP, **hparams}}, path)
    return path


def converted_run(tmp: Path, name: str = "run", **kwargs) -> Path:
    """A diffusion run directory converted from fixture checkpoints (kwargs: convert_medfusion's)."""
    vae = vae_checkpoint(tmp / f"{name}_vae.ckpt")
    pipe = pipeline_checkpoint(tmp / f"{name}_pipeline.ckpt")
    kwargs = {"dataset": "phantom-cxr", "image_size": IMAGE_SIZE, **kwargs}
    return convert_medfusion(vae, tmp / name, diffusion=pipe, **kwargs)


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True))


def test_diffusion_run_loads_with_the_reference_weights(tmp_path):
    run = converted_run(tmp_path)
    vae, unet = reference_modules()
    for path in (run, run / "checkpoints" / "0"):
        modules, config = load_trained(path)
        assert set(modules) == {"unet", "vae"}
        assert leaves_equal(split_params(modules["unet"])[1], split_params(unet)[1])
        assert leaves_equal(split_params(modules["vae"])[1], split_params(vae)[1])
    assert isinstance(config, DiffusionConfig) and not config.ema
    assert (config.schedule.strategy, config.schedule.beta_start, config.schedule.beta_end) == ("scaled_linear", 0.002,
                                                                                               0.02)
    assert config.data.image_size == IMAGE_SIZE and config.model.hid_chs == (16, 16, 32)
    spec = read_model_json(run)
    assert spec["class_names"] == ["no cardiomegaly", "cardiomegaly"]  # from the phantom-cxr registry entry
    assert spec["frozen"] == {"vae": "autoencoder/params"} and spec["sampling"] == {"clip_x0": False}
    assert spec["converted_from"]["diffusion"]["global_step"] == 300
    assert spec["converted_from"]["diffusion"]["latent_embedder_checked"] is True


def test_autoencoder_only_and_vaegan(tmp_path):
    vae, _ = reference_modules()
    out = convert_medfusion(vae_checkpoint(tmp_path / "vae.ckpt"), tmp_path / "ae")
    modules, config = load_trained(out)
    assert set(modules) == {"vae"} and isinstance(config, AutoencoderConfig)
    assert leaves_equal(split_params(modules["vae"])[1], split_params(vae)[1])
    assert config.model.hid_chs == (8, 8) and config.model.deep_supervision == 1
    # A VAEGAN checkpoint holds the VAE under vqvae.* beside its discriminators.
    state = OrderedDict(("vqvae." + k, v) for k, v in {**to_state_dict(vae), **PERCEIVER}.items())
    state["discriminator.0.inc.conv.weight"] = np.zeros((8, 3, 3, 3), np.float32)
    hp = {**VAE_HP, "start_gan_train_step": -1, "dropout": 0.0}
    out = convert_medfusion(vae_checkpoint(tmp_path / "vaegan.ckpt", state=state, hparams=hp), tmp_path / "gan",
                            class_names=["a", "b"])
    modules, _ = load_trained(out)
    assert leaves_equal(split_params(modules["vae"])[1], split_params(vae)[1])
    spec = read_model_json(out)
    assert spec["class_names"] == ["a", "b"] and spec["converted_from"]["autoencoder"]["reference_class"] == "VAEGAN"


def test_ema_weights_are_used_like_the_reference_forward(tmp_path):
    vae = vae_checkpoint(tmp_path / "vae.ckpt")
    out = convert_medfusion(vae, tmp_path / "run", diffusion=pipeline_checkpoint(tmp_path / "p.ckpt", use_ema=True))
    (_, raw), (_, averaged) = reference_modules(), reference_modules(unet_seed=7)
    modules, config = load_trained(out)
    assert config.ema and leaves_equal(split_params(modules["unet"])[1], split_params(averaged)[1])
    modules, _ = load_trained(out, use_ema=False)
    assert leaves_equal(split_params(modules["unet"])[1], split_params(raw)[1])


def test_class_names_and_schedule_defaults(tmp_path):
    vae = vae_checkpoint(tmp_path / "vae.ckpt")
    # No names given: class_<i>. No scheduler kwargs: GaussianNoiseScheduler's defaults (cosine).
    state = pipeline_state()
    for name in ("betas", "alphas_cumprod", "posterior_mean_coef1"):
        del state["noise_scheduler." + name]
    pipe = pipeline_checkpoint(tmp_path / "p.ckpt", state=state, noise_scheduler_kwargs={})
    out = convert_medfusion(vae, tmp_path / "run", diffusion=pipe)
    assert read_model_json(out)["class_names"] == ["class_0", "class_1"]
    _, config = load_trained(out)
    assert config.schedule.strategy == "cosine" and config.data.image_size == 256
    with pytest.raises(ConversionError, match="3 names but the UNet has 2 classes"):
        convert_medfusion(vae, tmp_path / "run2", diffusion=pipe, class_names=["a", "b", "c"])
    # The stored scheduler buffers must agree with the kwargs.
    pipe = pipeline_checkpoint(tmp_path / "p2.ckpt", noise_scheduler_kwargs={**SCHEDULER_HP, "beta_start": 1e-4})
    with pytest.raises(ConversionError, match="noise_scheduler.betas does not match"):
        convert_medfusion(vae, tmp_path / "run3", diffusion=pipe)


def test_unsupported_pipeline_settings_are_refused(tmp_path):
    vae = vae_checkpoint(tmp_path / "vae.ckpt")
    for hp, message in ((dict(estimator_objective="x_0"), "estimator_objective='x_0'"),
                        (dict(use_self_conditioning=True), "use_self_conditioning=True"),
                        (dict(noise_estimator="medical_diffusion.models.estimators.unet.UNet"),
                         "estimators.unet.UNet")):
        pipe = pipeline_checkpoint(tmp_path / "p.ckpt", **hp)
        with pytest.raises(ConversionError, match=message):
            convert_medfusion(vae, tmp_path / "run", diffusion=pipe)


def test_wrong_key_names_are_named_with_the_file(tmp_path, capsys):
    vae = vae_checkpoint(tmp_path / "vae.ckpt")
    state = pipeline_state()
    state["noise_estimator.in_conv.conv.wieght"] = state.pop("noise_estimator.in_conv.conv.weight")
    pipe = pipeline_checkpoint(tmp_path / "renamed.ckpt", state=state)
    args = ["medfusion", "--autoencoder", str(vae), "--diffusion", str(pipe), "--out", str(tmp_path / "run")]
    assert convert_main(args) == 2
    err = capsys.readouterr().err
    assert "renamed.ckpt" in err and "noise_estimator." in err
    assert "in_conv.conv.weight" in err and "in_conv.conv.wieght" in err  # missing and unexpected
    # A mis-shaped key in the autoencoder.
    vae_module, _ = reference_modules()
    vstate = OrderedDict(to_state_dict(vae_module))
    vstate["outc.conv.bias"] = np.zeros((5,), np.float32)
    bad = vae_checkpoint(tmp_path / "badvae.ckpt", state=vstate)
    assert convert_main(["medfusion", "--autoencoder", str(bad), "--out", str(tmp_path / "ae")]) == 2
    err = capsys.readouterr().err
    assert "badvae.ckpt" in err and "outc.conv.bias: expected (3,), got (5,)" in err
    # Not a checkpoint at all.
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    assert convert_main(["medfusion", "--autoencoder", str(tmp_path / "junk.ckpt"), "--out", str(tmp_path / "x")]) == 2
    assert "junk.ckpt" in capsys.readouterr().err


def test_latent_embedder_must_match_the_autoencoder(tmp_path):
    vae = vae_checkpoint(tmp_path / "vae.ckpt")
    state = pipeline_state()
    state["latent_embedder.outc.conv.bias"] = state["latent_embedder.outc.conv.bias"] + 1.0
    pipe = pipeline_checkpoint(tmp_path / "p.ckpt", state=state)
    message = r"latent_embedder weights are not those of --autoencoder.*outc\.conv\.bias"
    with pytest.raises(ConversionError, match=message):
        convert_medfusion(vae, tmp_path / "run", diffusion=pipe)


def test_cli_writes_a_run_and_refuses_a_non_empty_out(tmp_path, capsys):
    vae, pipe = vae_checkpoint(tmp_path / "vae.ckpt"), pipeline_checkpoint(tmp_path / "p.ckpt")
    args = ["medfusion", "--autoencoder", str(vae), "--diffusion", str(pipe), "--out", str(tmp_path / "run"),
            "--class-names", "healthy, sick", "--image-size", "16"]
    assert convert_main(args) == 0
    assert json.loads((tmp_path / "run" / "model.json").read_text())["class_names"] == ["healthy", "sick"]
    capsys.readouterr()
    assert convert_main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert convert_main(args + ["--overwrite"]) == 0
    modules, _ = load_trained(tmp_path / "run")
    assert leaves_equal(split_params(modules["unet"])[1], split_params(reference_modules()[1])[1])
