"""Presets, flags, configuration files, the run-directory check and the VAEGAN step counter."""

from __future__ import annotations

import dataclasses
import json
import re
import typing

import pytest

from medfusion_jax import config as config_lib
from medfusion_jax.training.autoencoder_task import AutoencoderSpec
from medfusion_jax.training.flags import field_type, flag_names
from medfusion_jax.training.loop import ConfigMismatchError, prepare_run_dir
from train import autoencoder as ae_cli
from train import diffusion as diffusion_cli


def ae_config(*flags):
    return ae_cli.make_config(ae_cli.parse_args(list(flags)))


@pytest.mark.parametrize("dataset, size, channels, pixel, flips", [
    ("airogs", 256, 4, "l1", "hv"),
    ("chexpert", 256, 8, "mse", ""),
    ("crcdx", 512, 4, "l1", "hv"),
])
def test_paper_presets(dataset, size, channels, pixel, flips):
    config = ae_config("--dataset", dataset)
    config_lib.validate(config)
    assert (config.data.image_size, config.model.emb_channels, config.pixel_loss, config.data.flips) == (
        size, channels, pixel, flips)
    assert config.model.hid_chs == (64, 128, 256, 512) and config.model.deep_supervision == 1
    assert (config.run.batch_size, config.run.epochs, config.run.steps) == (8, 1001, None)
    assert (config.lr, config.kl_weight, config.perceptual_weight, config.gan) == (1e-4, 1e-6, 1.0, None)


def test_flags_override_presets():
    config = ae_config("--dataset", "chexpert", "--emb-channels", "4", "--pixel-loss", "l1", "--image-size", "128",
                       "--hid-chs", "32,64,64,64", "--batch-size", "4", "--steps", "10", "--flips", "h")
    assert (config.model.emb_channels, config.pixel_loss, config.data.image_size, config.model.hid_chs) == (
        4, "l1", 128, (32, 64, 64, 64))
    assert (config.run.batch_size, config.run.steps, config.run.epochs, config.data.flips) == (4, 10, None, "h")


def test_gan_stage_settings():
    config = ae_config("--dataset", "chexpert", "--gan")
    assert config.gan.start_step == -1 and config.lr == 1e-6 and config.gan.disc_lr == 1e-6
    assert config.pixel_loss == "l1"  # VAEGAN's reconstruction term, whatever the preset says
    assert ae_config("--dataset", "airogs", "--gan-start-step", "50000").gan.start_step == 50000
    with pytest.raises(ValueError, match="pixel_loss mse cannot be used with the GAN stage"):
        config_lib.validate(ae_config("--dataset", "chexpert", "--gan", "--pixel-loss", "mse"))
    with pytest.raises(ValueError, match="--fix-gan-step-counter needs --gan"):
        ae_config("--dataset", "airogs", "--fix-gan-step-counter")
    with pytest.raises(ValueError, match="--disc-lr needs --gan"):
        ae_config("--dataset", "airogs", "--disc-lr", "1e-5")


def test_reference_step_counter_advances_twice_per_batch():
    config = ae_config("--dataset", "airogs", "--gan-start-step", "10")
    spec = AutoencoderSpec(vae_graph=None, vgg_graph=None, disc_graphs=(None, None), config=config)
    # Batch b is counter 2b for the autoencoder's call and 2b + 1 for the discriminators'.
    assert [spec.gan_active(b) for b in (4, 5, 6)] == [(False, False), (False, True), (True, True)]
    fixed = dataclasses.replace(spec, config=dataclasses.replace(
        config, gan=dataclasses.replace(config.gan, fix_step_counter=True)))
    assert [fixed.gan_active(b) for b in (10, 11)] == [(False, False), (True, True)]


def test_bad_values_name_their_field_and_the_command_lines_their_flag():
    # The phantom preset downsamples twice (4x); the paper's networks three times (8x).
    cases = [
        (("--image-size", "102"), "data.image_size 102 must be divisible by 4", "--image-size 102 must be"),
        (("--image-size", "100", "--hid-chs", "32,64,64,64"), "data.image_size 100 must be divisible by 8", None),
        (("--hid-chs", "12,16,16,16"), r"model.hid_chs \(12, 16, 16, 16\) must be multiples of the 8 norm groups "
                                        r"\(model.norm_groups\)", r"--hid-chs .* norm groups \(--norm-groups\)"),
        (("--image-size", "16", "--perceptual-weight", "1"), "at least 16x16 pixels", "perceptual-weight 0"),
        (("--batch-size", "0"), "run.batch_size must be positive", "--batch-size must be positive"),
        (("--keep-checkpoints", "0"), "run.keep_checkpoints must", "--keep-checkpoints must"),
    ]
    for flags, field_message, flag_message in cases:
        config = ae_config("--dataset", "phantom-cxr", *flags)
        with pytest.raises(config_lib.ConfigError, match=field_message) as err:
            config_lib.validate(config)
        if flag_message:
            names = flag_names(ae_cli.FLAGS)
            assert re.search(flag_message, err.value.named(names)), err.value.named(names)
            assert "`" not in err.value.named(names) and "`" not in str(err.value)
    with pytest.raises(SystemExit):
        ae_cli.parse_args(["--dataset", "phantom-cxr", "--hid-chs", "8,x"])


#: Fields without a flag, and why: each follows from another setting or is fixed by the spec.
DERIVED_FIELDS = {
    "data.dataset": "--dataset picks the preset",
    "stage": "the command",
    "autoencoder": "--autoencoder (the diffusion stage's base)",
    "model.kernel_sizes": "follow --hid-chs (presets.with_channels)",
    "model.strides": "follow --hid-chs",
    "model.in_channels": "the data set's channels",
    "model.out_channels": "the data set's channels",
    "model.spatial_dims": "images or volumes, from the data set",
    "gan.disc_hid_chs": "the autoencoder's --hid-chs",
    "gan.disc_norm_groups": "the autoencoder's --norm-groups",
    "schedule.strategy": "spec 7.1: scaled-linear",
    "schedule.timesteps": "spec 7.1: 1000 steps",
    "schedule.beta_start": "spec 7.1: 0.002",
    "schedule.beta_end": "spec 7.1: 0.02",
}


def leaf_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = [t for t in typing.get_args(hints[f.name]) if t is not type(None)] or [hints[f.name]]
        if dataclasses.is_dataclass(kind[0]):
            out += leaf_fields(kind[0], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


@pytest.mark.parametrize("cli, config_class, dataset", [
    (ae_cli, config_lib.AutoencoderConfig, "airogs"), (diffusion_cli, config_lib.DiffusionConfig, "airogs")])
def test_every_setting_is_one_flag_derived_from_its_field(cli, config_class, dataset):
    """Every configuration field has exactly one flag or a stated reason not to; each flag parses the text
    into its field's type and sets that field, and nothing else, in the made configuration."""
    by_field = {}
    for flag in cli.FLAGS:
        assert flag.field not in by_field, f"{flag.field} has two flags"
        by_field[flag.field] = flag
    fields = leaf_fields(config_class)
    assert sorted(set(fields) - set(by_field)) == sorted(f for f in DERIVED_FIELDS if f in fields)
    assert set(by_field) <= set(fields)
    base_args = ["--dataset", dataset] + (["--autoencoder", "/a", "--image-size", "64"] if cli is diffusion_cli
                                          else ["--gan"])
    base = config_lib.to_dict(cli.make_config(cli.parse_args(base_args)))
    samples = {int: "3", float: "0.25", str: "h", bool: None}
    for field, flag in by_field.items():
        kind = field_type(config_class, field)
        text = flag.choices[-1] if flag.choices else "1,1,2" if flag.metavar == "D,H,W" else (
            "16,32" if kind == tuple[int, ...] else samples[kind])
        argv = base_args + ([flag.flag] if text is None else [flag.flag, text])
        changed = config_lib.to_dict(cli.make_config(cli.parse_args(argv)))
        value = changed
        for part in field.split("."):
            value = value[part]
        expected = {None: flag.const}.get(text, text)
        if kind in (int, float):
            expected = kind(text)
        elif kind == tuple[int, ...] or flag.metavar == "D,H,W":
            expected = [int(v) if kind == tuple[int, ...] else float(v) for v in text.split(",")]
        assert value == expected, (flag.flag, value, expected)
        differ = {k for k in flat(changed) if flat(changed)[k] != flat(base).get(k)}
        allowed = {field, *flag.clears} | ({"model.kernel_sizes", "model.strides", "gan.disc_hid_chs"}
                                            if field == "model.hid_chs" else set()) | (
            {"gan.disc_norm_groups"} if field == "model.norm_groups" and cli is ae_cli else set())
        assert differ <= allowed, (flag.flag, differ)


def flat(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}."))
    return out


def test_cli_reports_errors_with_exit_status_2(tmp_path, capsys):
    code = ae_cli.main(["--dataset", "phantom-cxr", "--image-size", "38", "--run-dir", str(tmp_path / "run")])
    assert code == 2
    assert "--image-size 38" in capsys.readouterr().err
    code = diffusion_cli.main(["--dataset", "phantom-cxr", "--autoencoder", str(tmp_path / "nothing")])
    assert code == 2
    assert "not a training run directory" in capsys.readouterr().err


def test_config_round_trip_and_run_directory_check(tmp_path):
    config = ae_config("--dataset", "phantom-cxr", "--run-dir", str(tmp_path), "--gan")
    assert config_lib.from_dict(json.loads(json.dumps(config_lib.to_dict(config)))) == config
    assert prepare_run_dir(config) is None
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["stage"] == "autoencoder" and saved["gan"]["start_step"] == -1

    # How long and how often may change on resume; what is trained may not.
    assert prepare_run_dir(ae_config("--dataset", "phantom-cxr", "--run-dir", str(tmp_path), "--gan",
                                     "--steps", "99", "--log-every", "3")) is None
    other = ae_config("--dataset", "phantom-cxr", "--run-dir", str(tmp_path), "--gan", "--seed", "1",
                      "--emb-channels", "4")
    with pytest.raises(ConfigMismatchError) as err:
        prepare_run_dir(other)
    assert set(err.value.differing) == {"run.seed", "model.emb_channels"}
    assert "run.seed: saved 0, now 1" in str(err.value)


def test_resume_flags(tmp_path):
    config = ae_config("--dataset", "phantom-cxr", "--run-dir", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--resume: .* has no checkpoint"):
        prepare_run_dir(config, resume=True)
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    (tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-1").mkdir()  # an unfinished save is ignored
    assert prepare_run_dir(config) == 5 and prepare_run_dir(config, resume=True) == 5
    with pytest.raises(FileExistsError, match="already has checkpoints"):
        prepare_run_dir(config, resume=False)
    assert ae_cli.parse_args(["--dataset", "phantom-cxr"]).resume is None
    assert ae_cli.parse_args(["--dataset", "phantom-cxr", "--no-resume"]).resume is False
    with pytest.raises(SystemExit):
        ae_cli.parse_args(["--dataset", "phantom-cxr", "--resume", "--no-resume"])


@pytest.mark.parametrize("stage", ["diffusion", "autoencoder"])
def test_learning_rate_decay_matches_adam_by_hand(stage):
    """--lr-decay-start/end: the rate held until the start, linear to 0 at the end, then 0; checked against a
    NumPy AdamW (diffusion; torch semantics: decoupled decay 0.01 scaled by the rate) and Adam (autoencoder)."""
    import jax.numpy as jnp
    import numpy as np

    from medfusion_jax.training.autoencoder_task import vae_optimizer
    from medfusion_jax.training.diffusion_task import DiffusionSpec, optimizer

    def config(*flags):
        if stage == "autoencoder":
            return ae_config("--dataset", "phantom-cxr", "--lr", "0.1", *flags)
        return diffusion_cli.make_config(diffusion_cli.parse_args(
            ["--dataset", "phantom-cxr", "--autoencoder", "unused", "--image-size", "64", "--lr", "0.1", *flags]))

    decayed = config("--lr-decay-start", "2", "--lr-decay-end", "5")
    assert config().lr_decay_start is None
    if stage == "autoencoder":
        tx, weight_decay = vae_optimizer(decayed), 0.0
    else:
        tx, weight_decay = optimizer(DiffusionSpec(unet_graph=None, vae_graph=None, conditional=True,
                                                   config=decayed)), 0.01
    rng = np.random.default_rng(0)
    p = rng.normal(size=3)
    params, state = jnp.asarray(p, jnp.float32), tx.init(jnp.asarray(p, jnp.float32))
    m = v = np.zeros(3)
    for n in range(7):
        g = rng.normal(size=3)
        lr = 0.1 * min(1.0, max(0.0, (5 - n) / 3))   # 0.1, 0.1, 0.1, 0.0667, 0.0333, 0, 0
        p = p - lr * weight_decay * p
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        p = p - lr * (m / (1 - 0.9 ** (n + 1))) / (np.sqrt(v / (1 - 0.999 ** (n + 1))) + 1e-8)
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
        params = params + updates
        np.testing.assert_allclose(np.asarray(params), p, rtol=1e-5, atol=1e-6)
    for flags, message in [(("--lr-decay-start", "3"), "go together"),
                           (("--lr-decay-start", "5", "--lr-decay-end", "5"), "below `?lr_decay_end")]:
        with pytest.raises(ValueError, match=message):
            config_lib.validate(config(*flags))
