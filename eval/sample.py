"""Generate images per class with DDIM and write them as PNGs in the ImageFolder layout, plus a grid.

    python -m eval.sample --checkpoint RUN --num-per-class 1000 --out samples/run
    python -m eval.sample --checkpoint RUN/checkpoints/20000 --steps 250 --guidance 1 --out samples/s250
    python -m eval.sample --random-init --out runs/demo

``--checkpoint``: a diffusion run directory (its latest checkpoint), one of its ``checkpoints/<step>``
directories, or a directory written by ``python -m medfusion_jax.convert medfusion`` from the original
PyTorch checkpoints. The EMA weights are used when the run kept them (``--no-ema``: the raw weights).

Output: ``OUT/<class name>/%06d.png`` (class names from the run's data set, ``class_<i>`` when it has
none), ``OUT/grid.png`` (one row of up to 8 images per class) and ``OUT/samples.json`` (every setting).
Images are uint8, truncated as the reference's sample_dataset.py does, and each is a function of the
seed, its class, its index and the settings, not of the batch it was drawn in. Rerun with the same
arguments, an interrupted command writes only the missing images; a folder made with other settings
is refused unless ``--overwrite``. Batches are split over every visible device. As a multi-process
job (``--coordinator-address``/``--num-processes``/``--process-id`` or ``--distributed``), each process
generates its share of the missing images on its own devices: the same set, image for image.

``--random-init`` samples from freshly initialised (untrained) networks of a small configuration: it
exercises the whole chain without a checkpoint. Like the reference, a fresh autoencoder's output layer
is zero, so those images are a flat mid-grey; they prove the plumbing, not a model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medfusion_jax import command
from medfusion_jax.command import add_multihost_flags, join_job
from medfusion_jax.workflows.sampling import SampleRequest, sample_checkpoint


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, metavar="CKPT",
                        help="diffusion run directory, RUN/checkpoints/<step>, or a converted checkpoint")
    source.add_argument("--random-init", action="store_true", help="sample from untrained small networks")
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per class)")
    p.add_argument("--num-per-class", type=int, default=8)
    p.add_argument("--classes", nargs="+", default=None,
                   help="class indices or names (default: all classes)")
    p.add_argument("--steps", type=int, default=150, help="DDIM steps (reference: 150)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta (reference: 1, stochastic)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per batch over this process's devices (rounded up to a multiple of their count)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even if the run kept an EMA")
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate every image even if OUT holds samples (also made with other settings)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_multihost_flags(p)
    args = p.parse_args(argv)
    if args.num_per_class < 1 or args.batch_size < 1:
        p.error("--num-per-class and --batch-size must be positive")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if not 0 <= args.seed < 2**32:
        p.error("--seed must be in [0, 2**32)")
    return args


def run(args) -> dict:
    join_job(args)
    return sample_checkpoint(SampleRequest(
        out=args.out, checkpoint=args.checkpoint, random_init=args.random_init, num_per_class=args.num_per_class,
        classes=args.classes, steps=args.steps, eta=args.eta, guidance=args.guidance, seed=args.seed,
        batch_size=args.batch_size, use_ema=not args.no_ema, overwrite=args.overwrite, progress=not args.quiet))


def main(argv=None) -> int:
    return command.run(lambda: _main(parse_args(argv)), prog="eval.sample")


def _main(args) -> int:
    summary = run(args)
    total = sum(summary["counts"].values())
    print(f"wrote {summary['written']} images ({total} in {args.out}) and {args.out / 'grid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
