"""The two stages assembled from a configuration: data, networks, train state, previews, then the loop.

``run_autoencoder(config)`` and ``run_diffusion(config)`` are what ``python -m train.autoencoder`` and
``python -m train.diffusion`` call after parsing their flags.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from medfusion_jax.config import (
    AutoencoderConfig,
    DataConfig,
    DiffusionConfig,
    from_dict,
    validate,
)
from medfusion_jax.data import DataError, ImageError, ImageSource, make_dataset, make_loader, normalize
from medfusion_jax.data.volumes import VolumeTransform
from medfusion_jax.images import image_grid, to_uint8
from medfusion_jax.mesh import make_mesh, replicated
from medfusion_jax.run_folder import (
    AUTOENCODER_COPY,
    load_trained,
    read_config,
    read_model_json,
    resolve_checkpoint,
    save_params,
    split_params,
    write_model_json,
)
from medfusion_jax.training import autoencoder_task, diffusion_task, latent_cache
from medfusion_jax.training.loop import Task, TrainResult, prepare_run_dir, train

PREVIEW_IMAGES = 8


def open_source(data: DataConfig) -> ImageSource:
    return make_dataset(data.dataset, data.data_dir, split="train", image_size=data.image_size,
                        num_examples=data.num_examples, volume_transform=volume_transform(data))


def volume_transform(data: DataConfig) -> VolumeTransform | None:
    """The ``volume-folder`` transforms of the configuration (None: the data set's default)."""
    if (data.volume_fit, data.volume_spacing, data.volume_intensity) == (None, None, None):
        return None
    return VolumeTransform(spacing=data.volume_spacing, fit=data.volume_fit or "resize",
                           intensity=data.volume_intensity or "zscore")


def image_loader(source: ImageSource, config: AutoencoderConfig | DiffusionConfig):
    """The shuffled, endlessly repeating Grain pipeline of this process's shard of every batch."""
    return make_loader(source, global_batch_size=config.run.batch_size, seed=config.run.seed, shuffle=True,
                       num_epochs=None, flips=config.data.flips, worker_count=config.data.worker_count,
                       shard_index=jax.process_index(), shard_count=jax.process_count())


def total_steps(config: AutoencoderConfig | DiffusionConfig, num_images: int) -> int:
    if config.run.steps is not None:
        return config.run.steps
    per_epoch = num_images // config.run.batch_size
    if per_epoch == 0:
        raise DataError(f"the data set has {num_images} images, fewer than one batch of {config.run.batch_size}")
    return config.run.epochs * per_epoch


def _first_images(source: ImageSource, count: int) -> np.ndarray:
    """The first ``count`` readable images of ``source``, normalised to [-1, 1] (the preview batch)."""
    images = []
    for i in range(len(source)):
        try:
            images.append(source[i]["image"])
        except ImageError:
            continue
        if len(images) == count:
            break
    return normalize(np.stack(images))


def run_autoencoder(config: AutoencoderConfig, *, resume: bool | None = None, mesh: Mesh | None = None,
                    handle_signals: bool = True) -> TrainResult:
    """Train the autoencoder (VAE or VAEGAN stage) described by ``config``."""
    validate(config)
    start = prepare_run_dir(config, resume=resume)
    mesh = mesh or make_mesh()
    source = open_source(config.data)
    init_params = None
    if config.init_from and start is None:
        modules, _ = load_trained(config.init_from)
        init_params = split_params(modules["vae"])[1]
    spec, state, constants = autoencoder_task.init_autoencoder(config, init_vae_params=init_params)
    if jax.process_index() == 0:
        write_model_json(config.run.run_dir, autoencoder_task.module_specs(config), source.class_names)

    preview_images = _first_images(source, PREVIEW_IMAGES)
    reconstruct = jax.jit(functools.partial(autoencoder_task.reconstruct, spec=spec))
    preview_key = jax.random.key(config.run.seed)

    def preview(state):
        out = reconstruct(jax.device_put(state["params"], replicated(mesh)), preview_images, preview_key)
        return image_grid(to_uint8(np.concatenate([preview_images, np.asarray(out)])), columns=len(preview_images))

    task = Task(
        name="autoencoder" if spec.disc_graphs == () else "vaegan",
        spec=spec,
        init_state=state,
        constants=constants,
        step_for=functools.partial(autoencoder_task.train_step_for, spec),
        iterator=image_loader(source, config),
        total_steps=total_steps(config, len(source)),
        images_per_step=config.run.batch_size,
        preview=preview,
    )
    return train(task, config, start_step=start, mesh=mesh, handle_signals=handle_signals)


def autoencoder_config(autoencoder: str | Path) -> AutoencoderConfig:
    """The configuration of the autoencoder run at ``autoencoder`` (a run directory or checkpoint)."""
    run_dir, _ = resolve_checkpoint(autoencoder)
    config = from_dict(read_config(run_dir))
    if not isinstance(config, AutoencoderConfig):
        raise ValueError(f"--autoencoder {autoencoder}: this is a {config.stage} run, not an autoencoder run")
    return config


def run_diffusion(config: DiffusionConfig, *, resume: bool | None = None, mesh: Mesh | None = None,
                  handle_signals: bool = True) -> TrainResult:
    """Train the latent diffusion model described by ``config`` on a frozen trained autoencoder."""
    validate(config)
    ae_run, ae_step = resolve_checkpoint(config.autoencoder)
    autoencoder_config(ae_run)
    modules, _ = load_trained(config.autoencoder, dtype=config.run.dtype)
    start = prepare_run_dir(config, resume=resume)
    mesh = mesh or make_mesh()
    vae = modules["vae"]
    vae_graph, vae_params = split_params(vae)
    source = open_source(config.data)
    if config.data.image_size % vae.downsampling:
        raise ValueError(f"--image-size {config.data.image_size} must be divisible by {vae.downsampling}")
    if vae.spatial_dims != config.model.spatial_dims:
        kinds = {2: "images", 3: "volumes"}
        raise ValueError(f"--autoencoder {config.autoencoder} was trained on {kinds[vae.spatial_dims]}, and "
                         f"--dataset {config.data.dataset} holds {kinds[config.model.spatial_dims]}")
    latent = config.data.image_size // vae.downsampling
    classes = list(range(len(source.class_names))) or None
    spec, state, constants, unet_kwargs = diffusion_task.init_diffusion(
        config, vae_graph=vae_graph, vae_params=vae_params, latent_channels=vae.emb_channels,
        num_classes=len(classes) if classes else None)

    run_dir = Path(config.run.run_dir)
    save_params(run_dir / AUTOENCODER_COPY / "params", vae_params)
    if jax.process_index() == 0:
        vae_spec = read_model_json(ae_run)["modules"]["vae"]
        write_model_json(run_dir, {"unet": {"class": "UNet", "kwargs": unet_kwargs}, "vae": vae_spec},
                         source.class_names, frozen={"vae": f"{AUTOENCODER_COPY}/params"})

    if config.cache_latents:
        fingerprint = dict(autoencoder=str(ae_run), autoencoder_step=ae_step, dataset=config.data.dataset,
                           data_dir=config.data.data_dir, image_size=config.data.image_size,
                           num_examples=config.data.num_examples, images=len(source))
        arrays = latent_cache.load_or_build(
            run_dir / "latents", fingerprint,
            lambda: latent_cache.encode_source(source, vae_graph, vae_params, mesh, batch_size=config.run.batch_size))
        iterator = latent_cache.LatentLoader(arrays, global_batch_size=config.run.batch_size, seed=config.run.seed,
                                             shard_index=jax.process_index(), shard_count=jax.process_count())
        num_images = len(arrays["label"])
    else:
        iterator = image_loader(source, config)
        num_images = len(source)

    preview_vae = jax.device_put(vae_params, replicated(mesh))
    device_constants = jax.device_put(constants, replicated(mesh))

    def preview(state):
        weights = {k: state[k] for k in ("params", "ema") if k in state}
        return diffusion_task.sample_grid(
            jax.device_put(weights, replicated(mesh)), device_constants, preview_vae, spec=spec, classes=classes,
            per_class=config.samples_per_class, latent_size=(latent,) * vae.spatial_dims,
            num_steps=config.sample_steps,
            guidance_scale=config.guidance_scale, seed=config.run.seed)

    task = Task(
        name="diffusion",
        spec=spec,
        init_state=state,
        constants=constants,
        step_for=lambda batch_index: (diffusion_task.diffusion_train_step, {}),
        iterator=iterator,
        total_steps=total_steps(config, num_images),
        images_per_step=config.run.batch_size,
        preview=preview,
    )
    return train(task, config, start_step=start, mesh=mesh, handle_signals=handle_signals)

