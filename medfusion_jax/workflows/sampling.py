"""Sampling a trained diffusion run (or fresh small networks) into an image folder: the library side of
``python -m eval.sample`` and of the demo's sampling stage (see that command's help for the folder's layout
and the resume rule)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
from flax import nnx

from medfusion_jax.command import CommandError, first_line
from medfusion_jax.diffusion.pipeline import ImageSampler, SampleSettings
from medfusion_jax.diffusion.schedule import make_schedule, schedule_from_config
from medfusion_jax.evaluation.sample_folder import SampleFolderError, sample_to_folder
from medfusion_jax.mesh import barrier, make_mesh
from medfusion_jax.models import VAE, UNet

# Small networks for --random-init: 64x64 images, 8x8x4 latents.
RANDOM_INIT_IMAGE = 64
RANDOM_INIT_VAE = dict(in_channels=3, out_channels=3, emb_channels=4, hid_chs=(16, 32, 64, 64))
RANDOM_INIT_UNET = dict(in_ch=4, out_ch=4, hid_chs=(32, 32, 64, 64), time_emb_dim=64, num_classes=2)


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


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """What to sample: a diffusion run (``checkpoint``; None with ``random_init``), how many images of which
    classes, and the DDIM settings. Each image is a function of the seed, its class and index and the
    settings, not of the batch or the process that draws it."""

    out: Path
    checkpoint: Path | None = None
    random_init: bool = False
    num_per_class: int = 8
    #: Class indices or names (None: every class).
    classes: list[str] | None = None
    steps: int = 150
    eta: float = 1.0
    guidance: float = 1.0
    seed: int = 0
    batch_size: int = 16
    use_ema: bool = True
    overwrite: bool = False
    progress: bool = True


def sample_checkpoint(request: SampleRequest) -> dict:
    """Write the requested images into ``request.out`` (ImageFolder layout, ``grid.png``, ``samples.json``);
    only those missing are drawn. As a multi-process job each process draws its share. Returns the
    summary of :func:`~medfusion_jax.evaluation.sample_folder.sample_to_folder` (``written``, ``counts``)."""
    if request.random_init:
        unet, vae, schedule, size, class_names, clip_x0, info = _random_init(request.seed)
    else:
        unet, vae, schedule, size, class_names, clip_x0, info = _load_checkpoint(request.checkpoint, request.use_ema)
    if not 1 <= request.steps <= schedule.timesteps:
        raise CommandError(f"--steps must be between 1 and {schedule.timesteps}, got {request.steps}")
    groups = _groups(request.classes, unet.num_classes, class_names)
    latent = size // vae.downsampling
    settings = SampleSettings(num_steps=request.steps, eta=request.eta, guidance_scale=request.guidance,
                              clip_x0=clip_x0, seed=request.seed)
    # Each process samples its share of the images on its own devices (no collectives between them).
    sampler = ImageSampler(unet, vae, schedule, latent_size=(latent,) * vae.spatial_dims, settings=settings,
                           batch_size=request.batch_size, mesh=make_mesh(jax.local_devices()))
    manifest = dict(
        info, random_init=bool(request.random_init), classes=[c for c, _ in groups], class_names=class_names,
        steps=request.steps, eta=request.eta, guidance=request.guidance, seed=request.seed, clip_x0=clip_x0,
        image_size=size, latent_shape=list(sampler.latent_shape), batch_size=sampler.batch_size,
        devices=sampler.mesh.devices.size, processes=jax.process_count(), device_kind=jax.devices()[0].device_kind,
    )
    try:
        return sample_to_folder(sampler, request.out, groups=groups, num_per_class=request.num_per_class,
                                manifest=manifest, overwrite=request.overwrite,
                                progress=request.progress and jax.process_index() == 0,
                                process_index=jax.process_index(), process_count=jax.process_count(),
                                barrier=barrier)
    except SampleFolderError as err:  # the output folder does not fit (e.g. other settings)
        raise CommandError(str(err)) from None


