"""The diffusion noise estimator: Medfusion's ``unet2.UNet`` (spec section 6), channels-last.

Input x_t is N x h x w x C latents (N x d x h x w x C with ``spatial_dims=3``), t integer timesteps [N],
the condition int labels [N] or None.
Unconditional means the label embedding is omitted (no learned null token), as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medfusion_jax.layers import (
    BasicBlock,
    BasicDown,
    BasicUp,
    Dtype,
    Embedding,
    Linear,
    UnetResBlock,
    check_attention,
    check_image,
)


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
    """[sin(t f) | cos(t f)] with f_k = exp(-k ln(10000) / (dim/2 - 1)); t is the raw integer timestep."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * (-math.log(10000.0) / (half - 1)))
    angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    # An odd dimension gets one zero column, as the reference pads it.
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class TimeEmbedding(nnx.Module):
    """``TimeEmbbeding``: sinusoid of dimension ``pos_dim`` (default emb_dim // 4) -> Linear -> Swish -> Linear."""

    def __init__(self, emb_dim: int, pos_dim: int | None = None, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.pos_dim = pos_dim or emb_dim // 4
        self.linear_1 = Linear(self.pos_dim, emb_dim, dtype=dtype, rngs=rngs)
        self.linear_2 = Linear(emb_dim, emb_dim, dtype=dtype, rngs=rngs)

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(sinusoidal_embedding(t, self.pos_dim))))


class LabelEmbedder(nnx.Module):
    """``LabelEmbedder``: ``nn.Embedding(num_classes, emb_dim)`` looked up directly (no MLP, no null class)."""

    def __init__(self, emb_dim: int, num_classes: int, *, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.embedding = Embedding(num_classes, emb_dim, rngs=rngs)

    def __call__(self, labels: jax.Array) -> jax.Array:
        return self.embedding(labels)


class UpStage(nnx.Module):
    """One decoder block: UnetResBlock on [h, skip] (+ attention 'none') and, closing a level, BasicUp."""

    def __init__(self, res: UnetResBlock, up: BasicUp | None):
        self.res = res
        self.up = up

    def __call__(self, x, emb):
        x = self.res(x, emb)
        return x if self.up is None else self.up(x)


class UNet(nnx.Module):
    """Label-conditioned UNet predicting the noise of a latent (``unet2.UNet`` of the reference).

    Levels: ``hid_chs[0]`` has only ``in_conv``; level i >= 1 has ``num_res_blocks`` residual blocks at
    ``hid_chs[i]`` and, except the last, a strided-conv downsampling. The decoder mirrors it with one extra
    block per level on the concatenation [h, skip] and upsamples at the end of every level but the first.
    """

    def __init__(
        self,
        in_ch: int = 4,
        out_ch: int = 4,
        hid_chs: Sequence[int] = (256, 256, 512, 1024),
        kernel_sizes: Sequence[int] = (3, 3, 3, 3),
        strides: Sequence[int] = (1, 2, 2, 2),
        norm_groups: int = 32,
        time_emb_dim: int = 1024,
        pos_emb_dim: int | None = None,
        num_classes: int | None = 2,
        num_res_blocks: int = 2,
        use_attention: str = "none",
        spatial_dims: int = 2,
        *,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_attention(use_attention)
        self.spatial_dims = spatial_dims
        depth = len(hid_chs)
        if not (len(kernel_sizes) == len(strides) == depth) or depth < 2:
            raise ValueError("UNet: hid_chs, kernel_sizes and strides must have the same length (>= 2)")
        self.in_ch, self.out_ch = in_ch, out_ch
        self.num_classes = num_classes
        # Downsampling uses strides[1..depth-2]; strides[0] belongs to in_conv.
        self.downsampling = strides[0]
        for s in strides[1:-1]:
            self.downsampling *= s
        kw = dict(norm_groups=norm_groups, emb_channels=time_emb_dim, spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
        plain = dict(spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)

        self.time_embedder = TimeEmbedding(time_emb_dim, pos_emb_dim, dtype=dtype, rngs=rngs)
        self.cond_embedder = LabelEmbedder(time_emb_dim, num_classes, rngs=rngs) if num_classes else None
        self.in_conv = BasicBlock(in_ch, hid_chs[0], kernel_sizes[0], strides[0], **plain)

        in_blocks: list[nnx.Module] = []
        skip_channels = [hid_chs[0]]
        for i in range(1, depth):
            for k in range(num_res_blocks):
                block_in = hid_chs[i - 1] if k == 0 else hid_chs[i]
                in_blocks.append(UnetResBlock(block_in, hid_chs[i], kernel_sizes[i], 1, **kw))
                skip_channels.append(hid_chs[i])
            if i < depth - 1:
                in_blocks.append(BasicDown(hid_chs[i], hid_chs[i], kernel_sizes[i], strides[i], **plain))
                skip_channels.append(hid_chs[i])
        self.in_blocks = nnx.List(in_blocks)

        self.middle_block = nnx.List([
            UnetResBlock(hid_chs[-1], hid_chs[-1], kernel_sizes[-1], 1, **kw),
            UnetResBlock(hid_chs[-1], hid_chs[-1], kernel_sizes[-1], 1, **kw),
        ])

        # out_blocks[idx] consumes skip idx; built from the deepest block (run first) to block 0.
        out_blocks: dict[int, UpStage] = {}
        h_channels = hid_chs[-1]
        for i in reversed(range(1, depth)):
            for k in reversed(range(num_res_blocks + 1)):
                idx = (i - 1) * (num_res_blocks + 1) + k
                # The block closing a level (k == 0) already narrows to the next level's width.
                out_channels = hid_chs[i - 1] if k == 0 else hid_chs[i]
                res = UnetResBlock(h_channels + skip_channels[idx], out_channels, kernel_sizes[i], 1, **kw)
                up = (
                    BasicUp(out_channels, out_channels, strides[i], strides[i], **plain)
                    if k == 0 and i > 1 else None
                )
                out_blocks[idx] = UpStage(res, up)
                h_channels = out_channels
        self.out_blocks = nnx.List([out_blocks[idx] for idx in range(len(out_blocks))])
        self.outc = BasicBlock(hid_chs[0], out_ch, 1, zero_conv=True, **plain)

    def embed(
        self, t: jax.Array, condition: jax.Array | None = None, condition_mask: jax.Array | None = None
    ) -> jax.Array:
        """Time embedding plus, where conditioned, the label embedding.

        ``condition_mask`` (bool [N], optional) keeps the label only where True, so a conditional and an
        unconditional pass can share one batch (guidance, per-sample CFG dropout).
        """
        emb = self.time_embedder(t)
        if condition is not None:
            if self.cond_embedder is None:
                raise ValueError("this UNet has no label embedder (num_classes=None) but a condition was given")
            label = self.cond_embedder(condition).astype(emb.dtype)
            if condition_mask is not None:
                label = jnp.where(condition_mask[:, None], label, jnp.zeros_like(label))
            emb = emb + label
        return emb

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        condition: jax.Array | None = None,
        condition_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Predicted noise, same shape as ``x``. ``t``: int timesteps [N] (or a scalar for all)."""
        check_image(x, self.in_ch, self.downsampling, "UNet input", self.spatial_dims)
        t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
        emb = self.embed(t, condition, condition_mask)

        h = self.in_conv(x)
        skips = [h]
        for block in self.in_blocks:
            h = block(h, emb) if isinstance(block, UnetResBlock) else block(h)
            skips.append(h)
        for block in self.middle_block:
            h = block(h, emb)
        for idx in reversed(range(len(self.out_blocks))):
            # Concatenation order [current h, skip], as the reference.
            h = self.out_blocks[idx](jnp.concatenate([h, skips.pop()], axis=-1), emb)
        return self.outc(h)
