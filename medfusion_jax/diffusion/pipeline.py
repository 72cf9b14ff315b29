"""From noise to images: DDIM in the latent space, decoding and the reference's uint8 conversion.

* :func:`generate_images`: a batch of uint8 images from one key (the training previews use it).
* :class:`ImageSampler`: decoded images for (class, index) items, batches split over the devices; the
  sample-folder format that evaluation writes with it is :mod:`medfusion_jax.evaluation.sample_folder`.

Keys: image ``i`` of class ``c`` is drawn from ``fold_in(fold_in(key(seed), c), i)`` alone (its starting
latent and every DDIM step noise; see ``per_sample_keys`` of
:func:`~medfusion_jax.diffusion.sampler.sample_latents`). An image is therefore a function of (seed, class,
index, settings): which other images share its batch, its position there, and which of them already exist
on disk do not matter, so an interrupted set can be completed image by image. The batch *size* (per
device) can still change the last float32 bits of the convolutions, which after 150 steps may move a few
pixels by one uint8 level; for a bit-identical result keep the per-device batch size (every batch is
padded to the full size, so the shape never changes within a run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from medfusion_jax.diffusion.sampler import sample_latents
from medfusion_jax.diffusion.schedule import NoiseSchedule
from medfusion_jax.images import to_uint8
from medfusion_jax.mesh import batch_sharding, host_local, make_mesh, replicated
from medfusion_jax.models import VAE, UNet

#: How image keys are derived; part of the manifest so that a future change cannot silently mix sets.
KEY_DERIVATION = "v1: image key = fold_in(fold_in(key(seed), class), index); split -> (x_T key, step keys)"
#: The class code of an unconditional model's images (it has no classes).
UNCONDITIONAL = 0


def generate_images(
    unet: UNet,
    vae: VAE,
    schedule: NoiseSchedule,
    labels: jax.Array | None,
    key: jax.Array,
    *,
    latent_size: tuple[int, ...],
    batch_size: int | None = None,
    num_steps: int = 150,
    eta: float = 1.0,
    guidance_scale: float = 1.0,
) -> np.ndarray:
    """uint8 NHWC images for ``labels`` (or ``batch_size`` unconditional ones): DDIM, then ``vae.decode``."""
    n = batch_size if labels is None else int(labels.shape[0])
    latents = sample_latents(unet, schedule, key, (n, *latent_size, unet.in_ch), labels, num_steps=num_steps,
                             eta=eta, guidance_scale=guidance_scale)
    return to_uint8(_decode(vae, latents))


@nnx.jit
def _decode(vae: VAE, latents: jax.Array) -> jax.Array:
    return vae.decode(latents)


# -- per-image keys and sharded batches ------------------------------------------------------------------


@jax.jit
def _fold_keys(base: jax.Array, classes: jax.Array, indices: jax.Array) -> jax.Array:
    return jax.vmap(lambda c, i: jax.random.fold_in(jax.random.fold_in(base, c), i))(classes, indices)


def image_keys(seed: int, classes: Sequence[int | None], indices: Sequence[int]) -> jax.Array:
    """One key per image: ``fold_in(fold_in(key(seed), class), index)`` (class None: unconditional)."""
    codes = np.asarray([UNCONDITIONAL if c is None else c for c in classes], np.uint32)
    return _fold_keys(jax.random.key(seed), jnp.asarray(codes), jnp.asarray(np.asarray(indices, np.uint32)))


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """What, besides the networks and the keys, determines an image."""

    num_steps: int = 150
    eta: float = 1.0
    guidance_scale: float = 1.0
    clip_x0: bool = False
    seed: int = 0


@partial(jax.jit, static_argnames=("unet_graph", "vae_graph", "shape", "num_steps", "guidance_scale", "clip_x0",
                                   "conditional"))
def _sample_and_decode(unet_graph, unet_params, vae_graph, vae_params, schedule, keys, labels, eta, *, shape,
                       num_steps, guidance_scale, clip_x0, conditional):
    unet = nnx.merge(unet_graph, unet_params)
    vae = nnx.merge(vae_graph, vae_params)
    latents = sample_latents(unet, schedule, keys, shape, labels if conditional else None, num_steps=num_steps,
                             eta=eta, clip_x0=clip_x0, guidance_scale=guidance_scale, per_sample_keys=True)
    return vae.decode(latents)


class ImageSampler:
    """Decoded uint8 images for lists of (class, index) items, one padded batch at a time.

    The networks' weights are replicated over ``mesh`` (default: every device), and each batch (keys and
    labels) is split along its first axis over the mesh's devices; jit partitions the rest. The batch size
    is rounded up to a multiple of the device count; shorter lists are padded and the padding dropped, so
    every call has the same shapes and compiles once.
    """

    def __init__(self, unet: UNet, vae: VAE, schedule: NoiseSchedule, *, latent_size: tuple[int, ...],
                 settings: SampleSettings, batch_size: int, mesh: Mesh | None = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.mesh = mesh or make_mesh()
        devices = self.mesh.devices.size
        self.batch_size = -(-batch_size // devices) * devices
        self.settings = settings
        self.conditional = unet.num_classes is not None
        self.num_classes = unet.num_classes
        self.latent_shape = (*latent_size, unet.in_ch)
        rep = replicated(self.mesh)
        self._unet_graph, unet_params = nnx.split(unet)
        self._vae_graph, vae_params = nnx.split(vae)
        # Weights restored over every device of a multi-process job: this process's copy, for its own mesh.
        unet_params, vae_params = host_local((unet_params, vae_params))
        self._unet_params = jax.device_put(unet_params, rep)
        self._vae_params = jax.device_put(vae_params, rep)
        self._schedule = jax.device_put(schedule, rep)
        self._batch = batch_sharding(self.mesh)

    def __call__(self, items: Sequence[tuple[int | None, int]]) -> np.ndarray:
        """uint8 NHWC images for ``items`` = [(class or None, index), ...] (at most ``batch_size``)."""
        n = len(items)
        if not 0 < n <= self.batch_size:
            raise ValueError(f"between 1 and {self.batch_size} items per call, got {n}")
        for cls, _ in items:
            if self.conditional and (cls is None or not 0 <= cls < self.num_classes):
                raise ValueError(f"class {cls!r}: the model has classes 0..{self.num_classes - 1}")
            if not self.conditional and cls is not None:
                raise ValueError(f"class {cls!r}: the model is unconditional (no classes)")
        padded = list(items) + [items[0]] * (self.batch_size - n)
        classes = [c for c, _ in padded]
        keys = jax.device_put(image_keys(self.settings.seed, classes, [i for _, i in padded]), self._batch)
        labels = jax.device_put(np.asarray([0 if c is None else c for c in classes], np.int32), self._batch)
        s = self.settings
        images = _sample_and_decode(
            self._unet_graph, self._unet_params, self._vae_graph, self._vae_params, self._schedule, keys, labels,
            jnp.float32(s.eta), shape=(self.batch_size, *self.latent_shape), num_steps=s.num_steps,
            guidance_scale=float(s.guidance_scale), clip_x0=bool(s.clip_x0), conditional=self.conditional)
        return to_uint8(np.asarray(images)[:n])
