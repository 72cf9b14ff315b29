"""From noise to images: DDIM in the latent space, decoding, and the reference's uint8 conversion."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from medfusion_jax.diffusion.sampler import sample_latents
from medfusion_jax.diffusion.schedule import NoiseSchedule
from medfusion_jax.models import VAE, UNet


def to_uint8(images: jax.Array) -> np.ndarray:
    """clip to [-1, 1], (x + 1) / 2 * 255, then *truncate* to uint8, as the reference's sample_dataset.py."""
    x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) / 2.0 * 255.0
    return x.astype(np.uint8)


def generate_images(
    unet: UNet,
    vae: VAE,
    schedule: NoiseSchedule,
    labels: jax.Array | None,
    key: jax.Array,
    *,
    latent_size: tuple[int, int],
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


def image_grid(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tile uint8 NHWC images into one HWC image, row-major, with ``pad`` black pixels between tiles."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
    return grid
