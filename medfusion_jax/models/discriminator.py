"""The PatchGAN-style ``Discriminator`` of Medfusion's VAEGAN stage (spec section 5.2), and the VAEGAN pair."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medfusion_jax.layers import BasicBlock, Dtype, check_image
from medfusion_jax.models.vae import VAE


class Discriminator(nnx.Module):
    """conv/GN/Swish stem, strided conv/GN/Swish stages, and a zero-initialised 3x3 conv to one logit map.

    A 256x256 input gives 32x32 logits, a 128x128 input 16x16; ``spatial_dims=3`` takes volumes.
    """

    def __init__(
        self,
        in_channels: int = 3,
        hid_chs: Sequence[int] = (64, 128, 256, 512),
        kernel_sizes: Sequence[int] = (3, 3, 3, 3),
        strides: Sequence[int] = (1, 2, 2, 2),
        norm_groups: int = 8,
        spatial_dims: int = 2,
        *,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(norm_groups=norm_groups, act=True, spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.downsampling = 1
        for s in strides:
            self.downsampling *= s
        self.inc = BasicBlock(in_channels, hid_chs[0], kernel_sizes[0], strides[0], **kw)
        self.encoder = nnx.List([
            BasicBlock(hid_chs[i - 1], hid_chs[i], kernel_sizes[i], strides[i], **kw) for i in range(1, len(hid_chs))
        ])
        self.outc = BasicBlock(hid_chs[-1], 1, 3, 1, zero_conv=True, spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_image(x, self.in_channels, self.downsampling, "Discriminator input", self.spatial_dims)
        h = self.inc(x)
        for block in self.encoder:
            h = block(h)
        return self.outc(h)


class VAEGAN(nnx.Module):
    """The autoencoder (``vqvae``, the reference's attribute name) with one discriminator per output.

    Output 0 is the full-resolution reconstruction, output j + 1 the deep-supervision head j.
    """

    def __init__(self, vae: VAE, discriminators: Sequence[Discriminator]):
        if len(discriminators) != 1 + len(vae.outc_ver):
            raise ValueError(
                f"VAEGAN needs one discriminator per output: {1 + len(vae.outc_ver)}, got {len(discriminators)}"
            )
        self.vqvae = vae
        self.discriminator = nnx.List(list(discriminators))
