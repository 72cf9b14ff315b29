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
import os
import sys
from pathlib import Path

import jax
from flax import nnx

from medfusion_jax import command
from medfusion_jax.command import CommandError, add_multihost_flags, first_line, join_job
from medfusion_jax.diffusion.pipeline import ImageSampler, SampleSettings
from medfusion_jax.diffusion.schedule import make_schedule, schedule_from_config
from medfusion_jax.evaluation.sample_folder import SampleFolderError, sample_to_folder
from medfusion_jax.mesh import barrier, make_mesh
from medfusion_jax.models import VAE, UNet

# Small networks for --random-init: 64x64 images, 8x8x4 latents.
RANDOM_INIT_IMAGE = 64
RANDOM_INIT_VAE = dict(in_channels=3, out_channels=3, emb_channels=4, hid_chs=(16, 32, 64, 64))
RANDOM_INIT_UNET = dict(in_ch=4, out_ch=4, hid_chs=(32, 32, 64, 64), time_emb_dim=64, num_classes=2)


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


def _load_checkpoint(path: Path, use_ema: bool):
    """(unet, vae, schedule, image size, class names, clip_x0, manifest entries) of a diffusion run."""
    # Imported here: the training package (Orbax, Grain) is not needed for --random-init.
    from medfusion_jax.config import DiffusionConfig
    from medfusion_jax.run_folder import (
        load_trained,
        read_model_json,
        resolve_checkpoint,
    )

    try:
        run_dir, step = resolve_checkpoint(path)
        modules, config = load_trained(run_dir / "checkpoints" / str(step), use_ema=use_ema)
        spec = read_model_json(run_dir)
    except Exception as err:  # noqa: BLE001 - any failure to read the run is reported in one line
        message = first_line(err)
        if str(path) not in message:
            message = f"{path}: {message}"
        raise CommandError(f"--checkpoint: cannot load {message}") from None
    if not isinstance(config, DiffusionConfig):
        raise CommandError(f"--checkpoint {path}: this is a {config.stage} run; sampling needs a diffusion run")
    unet, vae = modules["unet"], modules["vae"]
    size = config.data.image_size
    if size % vae.downsampling:
        raise CommandError(f"--checkpoint {path}: image size {size} is not divisible by the autoencoder's "
                           f"downsampling {vae.downsampling}")
    schedule = schedule_from_config(config.schedule)
    clip_x0 = bool(spec.get("sampling", {}).get("clip_x0", False))
    info = dict(checkpoint=str(run_dir), step=step, use_ema=bool(use_ema and config.ema))
    return unet, vae, schedule, size, list(spec.get("class_names") or []), clip_x0, info


def _random_init(seed: int):
    vae = VAE(**RANDOM_INIT_VAE, rngs=nnx.Rngs(seed))
    unet = UNet(**RANDOM_INIT_UNET, rngs=nnx.Rngs(seed + 1))
    info = dict(checkpoint="random-init", step=None, use_ema=False, random_init=True)
    return unet, vae, make_schedule(), RANDOM_INIT_IMAGE, [], False, info


def _groups(requested, num_classes: int | None, class_names: list[str]) -> list[tuple[int | None, str]]:
    """[(class index or None, folder name)] of the classes to sample."""
    if num_classes is None:
        if requested:
            raise CommandError("--classes: the model is unconditional (it has no classes)")
        return [(None, "unconditional")]
    names = class_names if len(class_names) == num_classes else [f"class_{i}" for i in range(num_classes)]
    unusable = [n for n in names if not n or n in (".", "..") or "/" in n or os.sep in n or names.count(n) > 1]
    if unusable:
        raise CommandError(f"the run's class names {names} cannot all be folder names ({unusable[0]!r})")
    if requested is None:
        return list(enumerate(names))
    groups = []
    for value in requested:
        if value in names:
            index = names.index(value)
        elif value.lstrip("-").isdigit():
            index = int(value)
        else:
            raise CommandError(f"--classes {value!r}: not a class index or one of {names}")
        if not 0 <= index < num_classes:
            raise CommandError(f"--classes {value}: the model has classes 0..{num_classes - 1} ({', '.join(names)})")
        if (index, names[index]) not in groups:
            groups.append((index, names[index]))
    return groups


def run(args) -> dict:
    join_job(args)
    if args.random_init:
        unet, vae, schedule, size, class_names, clip_x0, info = _random_init(args.seed)
    else:
        unet, vae, schedule, size, class_names, clip_x0, info = _load_checkpoint(args.checkpoint, not args.no_ema)
    if not 1 <= args.steps <= schedule.timesteps:
        raise CommandError(f"--steps must be between 1 and {schedule.timesteps}, got {args.steps}")
    groups = _groups(args.classes, unet.num_classes, class_names)
    latent = size // vae.downsampling
    settings = SampleSettings(num_steps=args.steps, eta=args.eta, guidance_scale=args.guidance, clip_x0=clip_x0,
                              seed=args.seed)
    # Each process samples its share of the images on its own devices (no collectives between them).
    sampler = ImageSampler(unet, vae, schedule, latent_size=(latent,) * vae.spatial_dims, settings=settings,
                           batch_size=args.batch_size, mesh=make_mesh(jax.local_devices()))
    manifest = dict(
        info, random_init=bool(args.random_init), classes=[c for c, _ in groups], class_names=class_names,
        steps=args.steps, eta=args.eta, guidance=args.guidance, seed=args.seed, clip_x0=clip_x0,
        image_size=size, latent_shape=list(sampler.latent_shape), batch_size=sampler.batch_size,
        devices=sampler.mesh.devices.size, processes=jax.process_count(), device_kind=jax.devices()[0].device_kind,
    )
    try:
        return sample_to_folder(sampler, args.out, groups=groups, num_per_class=args.num_per_class,
                                manifest=manifest, overwrite=args.overwrite,
                                progress=not args.quiet and jax.process_index() == 0,
                                process_index=jax.process_index(), process_count=jax.process_count(),
                                barrier=barrier)
    except SampleFolderError as err:  # the output folder does not fit (e.g. other settings)
        raise CommandError(str(err)) from None


def main(argv=None) -> int:
    return command.run(lambda: _main(parse_args(argv)), prog="eval.sample")


def _main(args) -> int:
    summary = run(args)
    total = sum(summary["counts"].values())
    print(f"wrote {summary['written']} images ({total} in {args.out}) and {args.out / 'grid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
