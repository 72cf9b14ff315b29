"""Flags shared by ``python -m train.autoencoder`` and ``python -m train.diffusion``, and their main wrapper.

Each flag is a :class:`~medfusion_jax.training.flags.Flag` naming the configuration field it sets. Preset
values (:mod:`medfusion_jax.training.presets`) fill every flag that is not given; a given flag always
wins. Errors in the input (a flag, a data folder, a run directory of another configuration)
end the command with a one-line message naming the flag or file and exit status 2; a NaN loss ends
it with status 1; Ctrl-C (after saving a checkpoint) with status 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from medfusion_jax import command
from medfusion_jax.command import EXIT_FAILED, EXIT_INTERRUPTED, CommandError, add_multihost_flags, join_job
from medfusion_jax.config import DTYPES, ConfigError, RunConfig
from medfusion_jax.data import DATASETS
from medfusion_jax.training.flags import Flag, add_flags, flag_names
from medfusion_jax.training.loop import NonFiniteLossError, TrainResult


def _spacing(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers D,H,W in mm, got {text!r}")
    return values  # type: ignore[return-value]


#: The data flags of both stages (their fields: :class:`~medfusion_jax.config.DataConfig`).
DATA_FLAGS = (
    Flag("data.data_dir", "the data set's folder (not needed for the phantom-* data sets)"),
    Flag("data.image_size", "side length of the square images (of the cubic volumes)"),
    Flag("data.flips", "random flips: '', 'h', 'v' or 'hv', volumes also 'd' (preset per data set and stage)"),
    Flag("data.num_examples", "phantom-* only: images in the training split"),
    Flag("data.worker_count", "decoding processes (default 0: threads of this process)", name="--workers"),
    Flag("data.volume_fit", "volume-folder: volume to cube by resizing (default) or by cropping/padding at the "
         "centre", choices=("resize", "crop-or-pad")),
    Flag("data.volume_spacing", "volume-folder: resample to this voxel spacing in mm first (e.g. 1,1,1)",
         parse=_spacing, metavar="D,H,W"),
    Flag("data.volume_intensity", "volume-folder: z-score per volume (default, MRI) or min-max rescale (CT)",
         choices=("zscore", "rescale")),
)

#: The run flags of both stages (:class:`~medfusion_jax.config.RunConfig`). ``--epochs`` comes before
#: ``--steps``: either replaces the preset's length, and ``--steps`` wins when both are given.
RUN_FLAGS = (
    Flag("run.run_dir", "where checkpoints, logs and images go (default runs/<stage>-<dataset>)"),
    Flag("run.seed", f"random seed (default {RunConfig.seed})"),
    Flag("run.batch_size", "images per step over all devices"),
    Flag("run.epochs", "passes over the data (the reference: at most 1001)", clears=("run.steps",)),
    Flag("run.steps", "optimizer steps (overrides --epochs)", clears=("run.epochs",)),
    Flag("run.dtype", "compute dtype; bfloat16 for GPU/TPU (parameters stay float32)", choices=DTYPES),
    Flag("run.fsdp", "shard parameters and optimizer state over the devices instead of replicating them"),
    Flag("run.remat", "recompute each residual block's activations in the backward pass instead of keeping "
         "them (less memory for large volumes, ~1/3 more compute; same values)"),
    Flag("run.checkpoint_every", "steps between checkpoints"),
    Flag("run.keep_checkpoints", f"checkpoints kept (the last K; default {RunConfig.keep_checkpoints})"),
    Flag("run.async_checkpoints", "write checkpoints before continuing", name="--sync-checkpoints", const=False),
    Flag("run.log_every", f"steps between metric records (default {RunConfig.log_every})"),
    Flag("run.image_every", "steps between PNG grids (0: none)"),
)

#: The learning-rate decay of both stages (:mod:`medfusion_jax.training.learning_rate`).
LR_DECAY_FLAGS = (
    Flag("lr_decay_start", "step from which the learning rate decays linearly (the paper: constant)"),
    Flag("lr_decay_end", "step at which the decayed learning rate reaches 0"),
)


def add_common_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """--dataset (which preset), the data and run flags, --resume/--no-resume and the multi-host flags."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, choices=sorted(DATASETS),
                      help="data set; its preset sets every other default")
    add_flags(data, config_class, DATA_FLAGS)
    run = parser.add_argument_group("run")
    add_flags(run, config_class, RUN_FLAGS)
    resume = run.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_const", const=True,
                        help="continue the run in --run-dir, and fail if it has no checkpoint (by default a run "
                             "directory with a checkpoint is resumed and an empty one is started)")
    resume.add_argument("--no-resume", dest="resume", action="store_const", const=False,
                        help="start a new run, and fail if --run-dir already has checkpoints")
    add_multihost_flags(parser)


def run_main(args: argparse.Namespace, make_config: Callable[[argparse.Namespace], Any],
             run: Callable[..., TrainResult], flags: Sequence[Flag]) -> int:
    """Join the distributed run (if asked), build the configuration and train; failures become exit codes
    through :func:`medfusion_jax.command.run` (a non-finite loss is 1, bad input 2, an interruption 130).
    A setting that cannot work is reported with the flag that sets it (``flags``: all the command's flags)."""
    return command.run(lambda: _train(args, make_config, run, flags), prog="train")


def _train(args: argparse.Namespace, make_config: Callable[[argparse.Namespace], Any],
           run: Callable[..., TrainResult], flags: Sequence[Flag]) -> int:
    join_job(args)
    try:
        config = make_config(args)
        result = run(config, resume=args.resume)
    except ConfigError as err:
        names = {"data.dataset": "--dataset", **flag_names(flags)}
        raise CommandError(err.named(names)) from None
    except NonFiniteLossError as err:
        raise CommandError(str(err), exit_code=EXIT_FAILED) from None
    if result.interrupted:
        print(f"interrupted at step {result.final_step}; checkpoint saved in {result.run_dir / 'checkpoints'}. "
              "Run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    loss = result.last_metrics.get("loss")
    print(f"done: step {result.final_step}" + (f", loss {loss:.5g}" if loss is not None else "")
          + f"; run directory {result.run_dir}")
    return 0
