"""Medfusion's networks: the autoencoder, the discriminator (and VAEGAN pair), and the diffusion UNet."""

from medfusion_jax.models.discriminator import VAEGAN, Discriminator
from medfusion_jax.models.unet import UNet
from medfusion_jax.models.vae import VAE

__all__ = ["VAE", "Discriminator", "VAEGAN", "UNet"]
