"""The Medfusion autoencoder (``VAE`` of the reference, spec section 4), channels-last.

Images are NHWC in [-1, 1]; latents are N x H/8 x W/8 x E (for the paper's three stride-2 levels).
With ``spatial_dims=3`` the same network takes volumes, N x D x H x W x C, as the original does
(MONAI convolutions with ``spatial_dims=3``); latents are then N x D/8 x H/8 x W/8 x E.
There is no latent scale factor, no post-quant conv and no output activation, as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medfusion_jax.layers import (
    BasicBlock,
    BasicDown,
    BasicUp,
    Dtype,
    UnetResBlock,
    check_attention,
    check_image,
)

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over all latent elements, divided by the batch size."""
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar) / mean.shape[0]


class DownBlock(nnx.Module):
    """BasicDown (strided conv) -> attention ('none') -> UnetResBlock."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, *, norm_groups, spatial_dims, dtype, rngs):
        self.down_op = BasicDown(in_channels, out_channels, kernel_size, stride, spatial_dims=spatial_dims,
                                 dtype=dtype, rngs=rngs)
        self.conv_block = UnetResBlock(out_channels, out_channels, kernel_size, 1,
                                       norm_groups=norm_groups, spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.conv_block(self.down_op(x))


class UpBlock(nnx.Module):
    """BasicUp (nearest 2x + conv) -> attention ('none') -> UnetResBlock; the VAE passes no skip."""

    def __init__(self, in_channels, out_channels, kernel_size, up_kernel_size, stride, *, norm_groups, spatial_dims,
                 dtype, rngs):
        self.up_op = BasicUp(in_channels, out_channels, up_kernel_size, stride, spatial_dims=spatial_dims,
                             dtype=dtype, rngs=rngs)
        self.conv_block = UnetResBlock(out_channels, out_channels, kernel_size, 1,
                                       norm_groups=norm_groups, spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.conv_block(self.up_op(x))


class VAE(nnx.Module):
    """KL-regularised convolutional autoencoder with optional deep-supervision heads.

    ``deep_supervision``: 0/False for none, an int n for n heads, True for depth - 1 heads (reference
    semantics). Head j is a zero-initialised 1x1 conv on the input of ``decoders[j]``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        emb_channels: int = 4,
        hid_chs: Sequence[int] = (64, 128, 256, 512),
        kernel_sizes: Sequence[int] = (3, 3, 3, 3),
        strides: Sequence[int] = (1, 2, 2, 2),
        norm_groups: int = 8,
        deep_supervision: int | bool = 0,
        use_attention: str = "none",
        spatial_dims: int = 2,
        *,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_attention(use_attention)
        self.spatial_dims = spatial_dims
        depth = len(hid_chs)
        if not (len(kernel_sizes) == len(strides) == depth):
            raise ValueError("VAE: hid_chs, kernel_sizes and strides must have the same length")
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.downsampling = 1
        for s in strides:
            self.downsampling *= s
        kw = dict(norm_groups=norm_groups, spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        plain = dict(spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)

        self.inc = UnetResBlock(in_channels, hid_chs[0], kernel_sizes[0], strides[0], **kw)
        self.encoders = nnx.List([
            DownBlock(hid_chs[i - 1], hid_chs[i], kernel_sizes[i], strides[i], **kw) for i in range(1, depth)
        ])
        self.out_enc = nnx.List([
            BasicBlock(hid_chs[-1], 2 * emb_channels, 3, **plain),
            BasicBlock(2 * emb_channels, 2 * emb_channels, 1, **plain),
        ])

        self.inc_dec = UnetResBlock(emb_channels, hid_chs[-1], 3, 1, **kw)
        # The upsampling kernel of level i+1 is its stride (reference: "upsample kernel" = strides[i]).
        self.decoders = nnx.List([
            UpBlock(hid_chs[i + 1], hid_chs[i], kernel_sizes[i], strides[i + 1], strides[i + 1], **kw)
            for i in range(depth - 1)
        ])
        self.outc = BasicBlock(hid_chs[0], out_channels, 1, zero_conv=True, **plain)
        num_heads = depth - 1 if deep_supervision is True else int(deep_supervision)
        if not 0 <= num_heads <= depth - 1:
            raise ValueError(f"VAE: deep_supervision={deep_supervision!r} allows at most {depth - 1} heads")
        self.outc_ver = nnx.List([
            BasicBlock(hid_chs[j + 1], out_channels, 1, zero_conv=True, **plain)
            for j in range(num_heads)
        ])

    # -- encoder -------------------------------------------------------------------------------
    def moments(self, x: jax.Array) -> jax.Array:
        """The encoder output ("moments"): channels [0:E] mean, [E:2E] log-variance before clamping."""
        check_image(x, self.in_channels, self.downsampling, "VAE input", self.spatial_dims)
        h = self.inc(x)
        for encoder in self.encoders:
            h = encoder(h)
        for layer in self.out_enc:
            h = layer(h)
        return h

    def posterior(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mean, clamped log-variance) of q(z | x), both float32."""
        mean, logvar = jnp.split(self.moments(x).astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def encode(self, x: jax.Array, *, key: jax.Array | None = None, noise: jax.Array | None = None) -> jax.Array:
        """A posterior sample z = mean + exp(logvar / 2) * eps, like the reference's ``encode``.

        Give ``key`` to draw eps, or ``noise`` to supply it (to replay recorded noise).
        """
        mean, logvar = self.posterior(x)
        return reparameterize(mean, logvar, key=key, noise=noise)

    def encode_mean(self, x: jax.Array) -> jax.Array:
        """The posterior mean: the deterministic encoding."""
        return self.posterior(x)[0]

    # -- decoder -------------------------------------------------------------------------------
    def decoder_features(self, z: jax.Array, with_heads: bool = True) -> tuple[jax.Array, list[jax.Array]]:
        """Inputs of the output convs: (input of ``outc``, [input of ``outc_ver[j]`` for each head j]).

        Exposed because VAEGAN's adaptive weight differentiates through these last layers.
        """
        check_image(z, self.emb_channels, 1, "VAE latent", self.spatial_dims)
        h = self.inc_dec(z)
        head_inputs: dict[int, jax.Array] = {}
        for i in reversed(range(len(self.decoders))):
            if with_heads and i < len(self.outc_ver):
                head_inputs[i] = h
            h = self.decoders[i](h)
        return h, [head_inputs[j] for j in sorted(head_inputs)]

    def _decode(self, z: jax.Array, with_heads: bool) -> tuple[jax.Array, list[jax.Array]]:
        h, head_inputs = self.decoder_features(z, with_heads)
        return self.outc(h), [head(f) for head, f in zip(self.outc_ver, head_inputs, strict=False)]

    def decode(self, z: jax.Array) -> jax.Array:
        """Latent -> image (unbounded; no tanh), without the deep-supervision heads."""
        return self._decode(z, with_heads=False)[0]

    def __call__(
        self, x: jax.Array, *, key: jax.Array | None = None, noise: jax.Array | None = None
    ) -> tuple[jax.Array, list[jax.Array], jax.Array]:
        """(reconstruction, [head outputs ordered by j], KL) for a posterior sample, as the reference's forward."""
        mean, logvar = self.posterior(x)
        z = reparameterize(mean, logvar, key=key, noise=noise)
        out, heads = self._decode(z, with_heads=True)
        return out, heads, kl_divergence(mean, logvar)


def reparameterize(mean, logvar, *, key=None, noise=None):
    """z = mean + exp(logvar / 2) * eps with eps drawn from ``key`` or given as ``noise``."""
    if noise is None:
        if key is None:
            raise ValueError("a posterior sample needs either `key` or `noise`")
        noise = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * noise
