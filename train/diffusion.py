"""Train Medfusion's latent diffusion model (stage 2) on a frozen trained autoencoder.

    python -m train.diffusion --autoencoder runs/autoencoder-airogs --dataset airogs --data-dir D
    python -m train.diffusion --autoencoder runs/autoencoder-phantom-cxr --dataset phantom-cxr --cache-latents

Spec 7.2: latents are posterior samples of the frozen encoder (or, with --cache-latents, of a cache of
the posterior mean and log-variance computed once); t uniform, eps prediction, L1 loss; AdamW 1e-4
with weight decay 0.01; the label is dropped for the whole batch with probability 0.5
(--per-sample-cfg-dropout: per sample). --ema keeps an EMA of the weights for sampling. Images are
read at the autoencoder's size unless --image-size says otherwise. A run directory with a checkpoint
is resumed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from medfusion_jax.config import DiffusionConfig
from medfusion_jax.training.cli import add_common_flags, data_config, given, int_tuple, run_config, run_main
from medfusion_jax.training.presets import diffusion_config, with_channels
from medfusion_jax.training.stages import autoencoder_config, run_diffusion


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.diffusion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", required=True, help="trained autoencoder: run directory or checkpoint")
    add_common_flags(parser)
    model = parser.add_argument_group("UNet")
    model.add_argument("--hid-chs", type=int_tuple,
                       help="channels per level (the paper: 256,256,512,1024); levels after the second halve the size")
    model.add_argument("--time-emb-dim", type=int, help="time/label embedding width (the paper: 1024)")
    model.add_argument("--norm-groups", type=int, help="GroupNorm groups (the paper: 32)")
    model.add_argument("--num-res-blocks", type=int, help="residual blocks per level (the paper: 2)")
    train = parser.add_argument_group("training")
    train.add_argument("--lr", type=float, help="AdamW learning rate (the paper: 1e-4; preset per data set)")
    train.add_argument("--lr-decay-start", type=int,
                       help="step from which the learning rate decays linearly (the paper: constant)")
    train.add_argument("--lr-decay-end", type=int, help="step at which the decayed learning rate reaches 0")
    train.add_argument("--weight-decay", type=float, help="AdamW weight decay (the paper: 0.01, torch's default)")
    train.add_argument("--cfg-dropout", type=float, help="probability of dropping the label (the paper: 0.5)")
    train.add_argument("--per-sample-cfg-dropout", action="store_true",
                       help="drop labels per sample (the reference decides once per batch)")
    train.add_argument("--cache-latents", action="store_true",
                       help="encode the data once (posterior mean and log-variance) and train from the cache")
    train.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                       help="keep an EMA of the weights, used for sampling (the paper: no; phantom presets: yes)")
    train.add_argument("--ema-max-decay", type=float, help="the EMA's largest decay (the reference's EMAModel: 0.9999)")
    preview = parser.add_argument_group("sample grids")
    preview.add_argument("--sample-steps", type=int, help="DDIM steps of the sample grids (the reference: 150)")
    preview.add_argument("--guidance-scale", type=float, help="guidance of the sample grids (default 1: none)")
    preview.add_argument("--samples-per-class", type=int, help="images per class in the sample grids (default 4)")
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> DiffusionConfig:
    """The data set's preset configuration (:func:`~medfusion_jax.training.presets.diffusion_config`) on the
    given autoencoder, at its image size unless --image-size, with the given flags."""
    image_size = args.image_size or autoencoder_config(args.autoencoder).data.image_size
    base = diffusion_config(args.dataset, autoencoder=str(Path(args.autoencoder).expanduser().absolute()),
                            image_size=image_size)
    model = with_channels(base.model, args.hid_chs or base.model.hid_chs, **given(
        time_emb_dim=args.time_emb_dim, norm_groups=args.norm_groups, num_res_blocks=args.num_res_blocks))
    return replace(base, data=data_config(args, base.data), run=run_config(args, base.run), model=model,
                   **given(lr=args.lr, lr_decay_start=args.lr_decay_start, lr_decay_end=args.lr_decay_end,
                           weight_decay=args.weight_decay, cfg_dropout=args.cfg_dropout,
                           per_sample_cfg_dropout=args.per_sample_cfg_dropout or None,
                           cache_latents=args.cache_latents or None, ema=args.ema, ema_max_decay=args.ema_max_decay,
                           sample_steps=args.sample_steps, guidance_scale=args.guidance_scale,
                           samples_per_class=args.samples_per_class))


def main(argv=None) -> int:
    return run_main(parse_args(argv), make_config, run_diffusion)


if __name__ == "__main__":
    sys.exit(main())
