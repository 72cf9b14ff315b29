"""Flags shared by ``python -m train.autoencoder`` and ``python -m train.diffusion``, and their main wrapper.

Preset values (:mod:`medfusion_jax.training.presets`) fill every flag that is not given; a given flag
always wins. Errors in the input (a flag, a data folder, a run directory of another configuration)
end the command with a one-line message naming the flag or file and exit status 2; a NaN loss ends
it with status 1; Ctrl-C (after saving a checkpoint) with status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from medfusion_jax import command
from medfusion_jax.command import EXIT_FAILED, EXIT_INTERRUPTED, CommandError, add_multihost_flags, join_job
from medfusion_jax.config import DTYPES, DataConfig, RunConfig
from medfusion_jax.data import DATASETS
from medfusion_jax.training.loop import NonFiniteLossError, TrainResult


def int_tuple(text: str) -> tuple[int, ...]:
    """'64,128,256,512' -> (64, 128, 256, 512)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, choices=sorted(DATASETS),
                      help="data set; its preset sets every other default")
    data.add_argument("--data-dir", help="the data set's folder (not needed for the phantom-* data sets)")
    data.add_argument("--image-size", type=int, help="side length of the square images (of the cubic volumes)")
    data.add_argument("--flips",
                      help="random flips: '', 'h', 'v' or 'hv', volumes also 'd' (preset per data set and stage)")
    data.add_argument("--num-examples", type=int, help="phantom-* only: images in the training split")
    data.add_argument("--workers", type=int, help="decoding processes (default 0: threads of this process)")
    data.add_argument("--volume-fit", choices=("resize", "crop-or-pad"),
                      help="volume-folder: volume to cube by resizing (default) or by cropping/padding at the centre")
    data.add_argument("--volume-spacing", type=_spacing, metavar="D,H,W",
                      help="volume-folder: resample to this voxel spacing in mm first (e.g. 1,1,1)")
    data.add_argument("--volume-intensity", choices=("zscore", "rescale"),
                      help="volume-folder: z-score per volume (default, MRI) or min-max rescale (CT)")

    run = parser.add_argument_group("run")
    run.add_argument("--run-dir", help="where checkpoints, logs and images go (default runs/<stage>-<dataset>)")
    run.add_argument("--seed", type=int, help=f"random seed (default {RunConfig.seed})")
    run.add_argument("--batch-size", type=int, help="images per step over all devices")
    run.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    run.add_argument("--epochs", type=int, help="passes over the data (the reference: at most 1001)")
    run.add_argument("--dtype", choices=DTYPES,
                     help="compute dtype; bfloat16 for GPU/TPU (parameters stay float32)")
    run.add_argument("--fsdp", action="store_true",
                     help="shard parameters and optimizer state over the devices instead of replicating them")
    run.add_argument("--remat", action="store_true",
                     help="recompute each residual block's activations in the backward pass instead of keeping "
                          "them (less memory for large volumes, ~1/3 more compute; same values)")
    run.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    run.add_argument("--keep-checkpoints", type=int,
                     help=f"checkpoints kept (the last K; default {RunConfig.keep_checkpoints})")
    run.add_argument("--sync-checkpoints", action="store_true", help="write checkpoints before continuing")
    run.add_argument("--log-every", type=int, help=f"steps between metric records (default {RunConfig.log_every})")
    run.add_argument("--image-every", type=int, help="steps between PNG grids (0: none)")
    resume = run.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_const", const=True,
                        help="continue the run in --run-dir, and fail if it has no checkpoint (by default a run "
                             "directory with a checkpoint is resumed and an empty one is started)")
    resume.add_argument("--no-resume", dest="resume", action="store_const", const=False,
                        help="start a new run, and fail if --run-dir already has checkpoints")

    add_multihost_flags(parser)


def given(**values: Any) -> dict[str, Any]:
    """The flags that were given (not None): what changes the preset's configuration."""
    return {name: value for name, value in values.items() if value is not None}


def data_config(args: argparse.Namespace, base: DataConfig) -> DataConfig:
    """The preset's data settings with the given data flags."""
    return dataclasses.replace(base, **given(
        data_dir=args.data_dir, image_size=args.image_size, flips=args.flips, num_examples=args.num_examples,
        worker_count=args.workers, volume_fit=args.volume_fit, volume_spacing=args.volume_spacing,
        volume_intensity=args.volume_intensity))


def _spacing(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers D,H,W in mm, got {text!r}")
    return values  # type: ignore[return-value]


def run_config(args: argparse.Namespace, base: RunConfig) -> RunConfig:
    """The preset's run settings with the given run flags (``--steps`` wins over ``--epochs``, and either
    replaces the preset's length)."""
    length = {}
    if args.steps is not None:
        length = dict(steps=args.steps, epochs=None)
    elif args.epochs is not None:
        length = dict(steps=None, epochs=args.epochs)
    return dataclasses.replace(base, **length, **given(
        run_dir=args.run_dir, seed=args.seed, batch_size=args.batch_size, dtype=args.dtype,
        fsdp=args.fsdp or None, remat=args.remat or None, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, async_checkpoints=False if args.sync_checkpoints else None,
        log_every=args.log_every, image_every=args.image_every))


def run_main(args: argparse.Namespace, make_config: Callable[[argparse.Namespace], Any],
             run: Callable[..., TrainResult]) -> int:
    """Join the distributed run (if asked), build the configuration and train; failures become exit codes
    through :func:`medfusion_jax.command.run` (a non-finite loss is 1, bad input 2, an interruption 130)."""
    return command.run(lambda: _train(args, make_config, run), prog="train")


def _train(args: argparse.Namespace, make_config: Callable[[argparse.Namespace], Any],
           run: Callable[..., TrainResult]) -> int:
    join_job(args)
    config = make_config(args)
    try:
        result = run(config, resume=args.resume)
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
