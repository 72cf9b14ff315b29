"""Train Medfusion's autoencoder (stage 1): the VAE, or its VAEGAN fine-tuning.

    python -m train.autoencoder --dataset airogs --data-dir ~/AIROGS/data_256x256    # the paper's setting
    python -m train.autoencoder --dataset phantom-cxr                               # built-in data, CPU-sized
    python -m train.autoencoder --dataset chexpert --data-dir D --gan --init-from runs/autoencoder-chexpert \
        --run-dir runs/vaegan-chexpert                                              # VAEGAN fine-tuning

Loss (spec 4.3): pixel term (--pixel-loss l1|mse) + LPIPS-VGG16 (uncalibrated) + 1 - SSIM per image,
scaled by C*H*W, on the output and the deep-supervision head, + 1e-6 KL; Adam 1e-4. With --gan (GAN
terms from the first batch) or --gan-start-step N: VAEGAN (spec 5), two PatchGAN discriminators,
hinge loss, adaptive weights, L1, area-downsampled head targets, Adam 1e-6 for both.
Presets per data set (--dataset) set image size, latent channels, pixel loss and flips; every flag
overrides its preset. A run directory with a checkpoint is resumed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from medfusion_jax.config import AutoencoderConfig
from medfusion_jax.training.cli import DATA_FLAGS, LR_DECAY_FLAGS, RUN_FLAGS, add_common_flags, run_main
from medfusion_jax.training.flags import Flag, add_flags, apply_flags, given
from medfusion_jax.training.presets import autoencoder_config, with_channels
from medfusion_jax.training.stages import run_autoencoder

MODEL_FLAGS = (
    Flag("model.emb_channels", "latent channels (8 CheXpert, 4 AIROGS/CRC-DX)"),
    Flag("model.hid_chs", "channels per level, e.g. 64,128,256,512 (every level after the first halves the size)"),
    Flag("model.deep_supervision", "deep-supervision heads (the paper: 1)"),
    Flag("model.norm_groups", "GroupNorm groups (the paper: 8)"),
)
LOSS_FLAGS = (
    Flag("pixel_loss", "pixel term (CheXpert preset: mse; VAEGAN: l1)", choices=("l1", "mse")),
    Flag("perceptual_weight", "LPIPS-VGG weight (the paper: 1; 0 disables it; the phantom presets: 0)"),
    Flag("kl_weight", "KL term weight (the paper: 1e-6)"),
    Flag("lr", "autoencoder learning rate (the paper: 1e-4, 1e-6 in the GAN stage; phantom presets: 1e-3)"),
    *LR_DECAY_FLAGS,
    Flag("init_from", "start from this trained autoencoder run or checkpoint"),
)
#: The GAN stage's settings; --gan-start-step also selects the stage (as --gan does).
GAN_FLAGS = (
    Flag("gan.start_step", "VAEGAN whose GAN terms start once the step counter exceeds this (class default 50000)",
         name="--gan-start-step"),
    Flag("gan.disc_lr", "discriminators' learning rate (the paper: 1e-6)"),
    Flag("gan.gan_weight", "GAN term weight (the paper: 1)"),
    Flag("gan.fix_step_counter", "count batches for --gan-start-step (the reference counts twice per batch)",
         name="--fix-gan-step-counter"),
)
FLAGS = DATA_FLAGS + RUN_FLAGS + MODEL_FLAGS + LOSS_FLAGS + GAN_FLAGS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.autoencoder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, AutoencoderConfig)
    add_flags(parser.add_argument_group("autoencoder"), AutoencoderConfig, MODEL_FLAGS)
    add_flags(parser.add_argument_group("loss and optimizer"), AutoencoderConfig, LOSS_FLAGS)
    gan = parser.add_argument_group("GAN stage (VAEGAN)")
    gan.add_argument("--gan", action="store_true", help="VAEGAN with GAN terms from the first batch")
    add_flags(gan, AutoencoderConfig, GAN_FLAGS)
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> AutoencoderConfig:
    """The data set's preset configuration (:func:`~medfusion_jax.training.presets.autoencoder_config`) with
    the given flags; the kernel sizes and strides follow the channels, the discriminators the autoencoder's."""
    gan_mode = args.gan or args.gan_start_step is not None
    if not gan_mode and given(args, GAN_FLAGS):
        raise ValueError(f"{given(args, GAN_FLAGS)[0]} needs --gan or --gan-start-step")
    config = apply_flags(autoencoder_config(args.dataset, gan=gan_mode), args, FLAGS)
    model = with_channels(config.model, config.model.hid_chs)
    gan = config.gan and replace(config.gan, disc_hid_chs=model.hid_chs, disc_norm_groups=model.norm_groups)
    return replace(config, model=model, gan=gan)


def main(argv=None) -> int:
    return run_main(parse_args(argv), make_config, run_autoencoder, FLAGS)


if __name__ == "__main__":
    sys.exit(main())
