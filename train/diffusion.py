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
from medfusion_jax.training.cli import DATA_FLAGS, LR_DECAY_FLAGS, RUN_FLAGS, add_common_flags, run_main
from medfusion_jax.training.flags import Flag, add_flags, apply_flags
from medfusion_jax.training.presets import diffusion_config, with_channels
from medfusion_jax.training.stages import autoencoder_config, run_diffusion

MODEL_FLAGS = (
    Flag("model.hid_chs", "channels per level (the paper: 256,256,512,1024); levels after the second halve the size"),
    Flag("model.time_emb_dim", "time/label embedding width (the paper: 1024)"),
    Flag("model.norm_groups", "GroupNorm groups (the paper: 32)"),
    Flag("model.num_res_blocks", "residual blocks per level (the paper: 2)"),
)
TRAIN_FLAGS = (
    Flag("lr", "AdamW learning rate (the paper: 1e-4; preset per data set)"),
    *LR_DECAY_FLAGS,
    Flag("weight_decay", "AdamW weight decay (the paper: 0.01, torch's default)"),
    Flag("cfg_dropout", "probability of dropping the label (the paper: 0.5)"),
    Flag("per_sample_cfg_dropout", "drop labels per sample (the reference decides once per batch)"),
    Flag("cache_latents", "encode the data once (posterior mean and log-variance) and train from the cache"),
    Flag("ema", "keep an EMA of the weights, used for sampling (the paper: no; phantom presets: yes)", negatable=True),
    Flag("ema_max_decay", "the EMA's largest decay (the reference's EMAModel: 0.9999)"),
)
PREVIEW_FLAGS = (
    Flag("sample_steps", "DDIM steps of the sample grids (the reference: 150)"),
    Flag("guidance_scale", "guidance of the sample grids (default 1: none)"),
    Flag("samples_per_class", "images per class in the sample grids (default 4)"),
)
FLAGS = DATA_FLAGS + RUN_FLAGS + MODEL_FLAGS + TRAIN_FLAGS + PREVIEW_FLAGS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.diffusion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", required=True, help="trained autoencoder: run directory or checkpoint")
    add_common_flags(parser, DiffusionConfig)
    add_flags(parser.add_argument_group("UNet"), DiffusionConfig, MODEL_FLAGS)
    add_flags(parser.add_argument_group("training"), DiffusionConfig, TRAIN_FLAGS)
    add_flags(parser.add_argument_group("sample grids"), DiffusionConfig, PREVIEW_FLAGS)
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> DiffusionConfig:
    """The data set's preset configuration (:func:`~medfusion_jax.training.presets.diffusion_config`) on the
    given autoencoder, at its image size unless --image-size, with the given flags (the kernel sizes and
    strides follow the channels)."""
    image_size = args.image_size or autoencoder_config(args.autoencoder).data.image_size
    base = diffusion_config(args.dataset, autoencoder=str(Path(args.autoencoder).expanduser().absolute()),
                            image_size=image_size)
    config = apply_flags(base, args, FLAGS)
    return replace(config, model=with_channels(config.model, config.model.hid_chs))


def main(argv=None) -> int:
    return run_main(parse_args(argv), make_config, run_diffusion, FLAGS)


if __name__ == "__main__":
    sys.exit(main())
