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
from medfusion_jax.training.cli import add_common_flags, data_config, given, int_tuple, run_config, run_main
from medfusion_jax.training.presets import autoencoder_config, with_channels
from medfusion_jax.training.stages import run_autoencoder


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.autoencoder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser)
    model = parser.add_argument_group("autoencoder")
    model.add_argument("--emb-channels", type=int, help="latent channels (8 CheXpert, 4 AIROGS/CRC-DX)")
    model.add_argument("--hid-chs", type=int_tuple,
                       help="channels per level, e.g. 64,128,256,512 (every level after the first halves the size)")
    model.add_argument("--deep-supervision", type=int, help="deep-supervision heads (the paper: 1)")
    model.add_argument("--norm-groups", type=int, help="GroupNorm groups (the paper: 8)")
    loss = parser.add_argument_group("loss and optimizer")
    loss.add_argument("--pixel-loss", choices=("l1", "mse"), help="pixel term (CheXpert preset: mse; VAEGAN: l1)")
    loss.add_argument("--perceptual-weight", type=float,
                      help="LPIPS-VGG weight (the paper: 1; 0 disables it; the phantom presets: 0)")
    loss.add_argument("--kl-weight", type=float, help="KL term weight (the paper: 1e-6)")
    loss.add_argument("--lr", type=float,
                      help="autoencoder learning rate (the paper: 1e-4, 1e-6 in the GAN stage; phantom presets: 1e-3)")
    loss.add_argument("--init-from", help="start from this trained autoencoder run or checkpoint")
    gan = parser.add_argument_group("GAN stage (VAEGAN)")
    gan.add_argument("--gan", action="store_true", help="VAEGAN with GAN terms from the first batch")
    gan.add_argument("--gan-start-step", type=int,
                     help="VAEGAN whose GAN terms start once the step counter exceeds this (class default 50000)")
    gan.add_argument("--disc-lr", type=float, help="discriminators' learning rate (the paper: 1e-6)")
    gan.add_argument("--gan-weight", type=float, help="GAN term weight (the paper: 1)")
    gan.add_argument("--fix-gan-step-counter", action="store_true",
                     help="count batches for --gan-start-step (the reference counts twice per batch)")
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> AutoencoderConfig:
    """The data set's preset configuration (:func:`~medfusion_jax.training.presets.autoencoder_config`) with
    the given flags."""
    gan_mode = args.gan or args.gan_start_step is not None
    if args.fix_gan_step_counter and not gan_mode:
        raise ValueError("--fix-gan-step-counter needs --gan or --gan-start-step")
    base = autoencoder_config(args.dataset, gan=gan_mode)
    model = with_channels(base.model, args.hid_chs or base.model.hid_chs, **given(
        emb_channels=args.emb_channels, deep_supervision=args.deep_supervision, norm_groups=args.norm_groups))
    gan = base.gan and replace(base.gan, disc_hid_chs=model.hid_chs, disc_norm_groups=model.norm_groups, **given(
        start_step=args.gan_start_step, disc_lr=args.disc_lr, gan_weight=args.gan_weight,
        fix_step_counter=args.fix_gan_step_counter or None))
    return replace(base, data=data_config(args, base.data), run=run_config(args, base.run), model=model, gan=gan,
                   **given(pixel_loss=args.pixel_loss, perceptual_weight=args.perceptual_weight,
                           kl_weight=args.kl_weight, lr=args.lr, init_from=args.init_from))


def main(argv=None) -> int:
    return run_main(parse_args(argv), make_config, run_autoencoder)


if __name__ == "__main__":
    sys.exit(main())
