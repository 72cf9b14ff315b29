"""Build our modules from the constructor arguments of the reference's classes.

The reference stores its constructor kwargs in golden ``config.json`` files and in Lightning checkpoints
(``hyper_parameters``). These functions accept those kwargs as they are (MONAI-style ``norm_name``
tuples, ``time_embedder_kwargs``...), ignore the training-only ones (optimizer, loss, logging), and
refuse the architectural options that no Medfusion configuration uses with a message naming them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx

from medfusion_jax.models import VAE, VAEGAN, Discriminator, UNet

# Constructor arguments that only configure training in the reference: accepted and ignored here.
_TRAINING_KWARGS = {
    "embedding_loss_weight", "perceiver", "perceiver_kwargs", "perceptual_loss_weight", "optimizer",
    "optimizer_kwargs", "lr_scheduler", "lr_scheduler_kwargs", "loss", "loss_kwargs", "sample_every_n_steps",
    "start_gan_train_step", "gan_loss_weight", "optimizer_vqvae", "optimizer_vqvae_kwargs", "optimizer_gan",
    "optimizer_gan_kwargs", "pixel_loss", "pixel_loss_kwargs", "gan_loss_fct", "gan_loss_fct_kwargs",
    "dropout",  # the reference uses p = 0 (or no dropout layer at all): a no-op either way
}


def norm_groups_from_reference(norm_name: Any, default: int) -> int:
    if norm_name is None:
        return default
    name, opts = (norm_name, {}) if isinstance(norm_name, str) else (norm_name[0], norm_name[1])
    if str(name).upper() != "GROUP" or not opts.get("affine", True):
        raise ValueError(f"norm_name={norm_name!r} is not supported: Medfusion uses affine GroupNorm ('GROUP')")
    return int(opts.get("num_groups", default))


def _check_act(act_name: Any) -> None:
    if act_name is None:
        return
    name = act_name if isinstance(act_name, str) else act_name[0]
    if str(name).upper() not in ("SWISH", "SILU"):
        raise ValueError(f"act_name={act_name!r} is not supported: Medfusion uses Swish (SiLU)")


def take_kwargs(kwargs: Mapping[str, Any], allowed: dict[str, Any], cls: str) -> dict[str, Any]:
    """Values of the architectural kwargs, with the reference's defaults; unknown keys are errors."""
    unknown = sorted(set(kwargs) - set(allowed) - _TRAINING_KWARGS)
    if unknown:
        raise ValueError(f"{cls}: unsupported constructor arguments {unknown}")
    out = {k: kwargs.get(k, v) for k, v in allowed.items()}
    if out["spatial_dims"] not in (2, 3):
        raise ValueError(f"{cls}: spatial_dims={out['spatial_dims']!r} is not supported (2: images, 3: volumes)")
    _check_act(out.pop("act_name"))
    for flag, required in (("use_res_block", True), ("learnable_interpolation", True)):
        if flag in out and out.pop(flag) is not required:
            raise ValueError(f"{cls}: {flag}={kwargs[flag]!r} is not supported (Medfusion uses {required})")
    return out


VAE_DEFAULTS = dict(
    in_channels=3, out_channels=3, spatial_dims=2, emb_channels=4, hid_chs=[64, 128, 256, 512],
    kernel_sizes=[3, 3, 3, 3], strides=[1, 2, 2, 2], norm_name=("GROUP", {"num_groups": 8, "affine": True}),
    act_name=("Swish", {}), use_res_block=True, deep_supervision=False, learnable_interpolation=True,
    use_attention="none",
)
DISC_DEFAULTS = dict(
    in_channels=3, spatial_dims=2, hid_chs=[64, 128, 256, 512], kernel_sizes=[3, 3, 3, 3], strides=[1, 2, 2, 2],
    act_name=("Swish", {}), norm_name=("GROUP", {"num_groups": 8, "affine": True}),
)
UNET_DEFAULTS = dict(
    in_ch=1, out_ch=1, spatial_dims=3, hid_chs=[256, 256, 512, 1024], kernel_sizes=[3, 3, 3, 3],
    strides=[1, 2, 2, 2], act_name=("SWISH", {}), norm_name=("GROUP", {"num_groups": 32, "affine": True}),
    time_embedder="TimeEmbbeding", time_embedder_kwargs={}, cond_embedder=None, cond_embedder_kwargs={},
    deep_supervision=True, use_res_block=True, estimate_variance=False, use_self_conditioning=False,
    learnable_interpolation=True, use_attention="none", num_res_blocks=2,
)


def vae_from_reference(kwargs: Mapping[str, Any], rngs: nnx.Rngs) -> VAE:
    a = take_kwargs(kwargs, VAE_DEFAULTS, "VAE")
    return VAE(
        a["in_channels"], a["out_channels"], a["emb_channels"], tuple(a["hid_chs"]), tuple(a["kernel_sizes"]),
        tuple(a["strides"]), norm_groups_from_reference(a["norm_name"], 8), a["deep_supervision"], a["use_attention"],
        a["spatial_dims"], rngs=rngs,
    )


def discriminator_from_reference(kwargs: Mapping[str, Any], rngs: nnx.Rngs) -> Discriminator:
    a = take_kwargs(kwargs, DISC_DEFAULTS, "Discriminator")
    return Discriminator(
        a["in_channels"], tuple(a["hid_chs"]), tuple(a["kernel_sizes"]), tuple(a["strides"]),
        norm_groups_from_reference(a["norm_name"], 8), a["spatial_dims"], rngs=rngs,
    )


def vaegan_from_reference(kwargs: Mapping[str, Any], rngs: nnx.Rngs) -> VAEGAN:
    """The VAEGAN's VAE, and one discriminator per output built from the same architecture arguments."""
    vae = vae_from_reference(kwargs, rngs)
    disc_kwargs = {k: kwargs[k] for k in DISC_DEFAULTS if k in kwargs and k != "in_channels"}
    disc_kwargs["in_channels"] = kwargs.get("out_channels", 3)
    return VAEGAN(vae, [discriminator_from_reference(disc_kwargs, rngs) for _ in range(1 + len(vae.outc_ver))])


def unet_from_reference(kwargs: Mapping[str, Any], rngs: nnx.Rngs) -> UNet:
    a = take_kwargs(kwargs, UNET_DEFAULTS, "UNet")
    for flag in ("deep_supervision", "estimate_variance", "use_self_conditioning"):
        if a[flag]:
            raise ValueError(f"UNet: {flag}=True is not supported (every Medfusion configuration sets it False)")
    if a["time_embedder"] not in ("TimeEmbbeding", "TimeEmbedding"):
        raise ValueError(f"UNet: time_embedder={a['time_embedder']!r} is not supported (use 'TimeEmbbeding')")
    time_kwargs = dict(a["time_embedder_kwargs"] or {})
    time_dim = int(time_kwargs.get("emb_dim", 64))
    pos_dim = (time_kwargs.get("pos_embedder_kwargs") or {}).get("emb_dim")
    num_classes = None
    if a["cond_embedder"] is not None:
        if a["cond_embedder"] != "LabelEmbedder":
            raise ValueError(f"UNet: cond_embedder={a['cond_embedder']!r} is not supported (use 'LabelEmbedder')")
        cond_kwargs = dict(a["cond_embedder_kwargs"] or {})
        if int(cond_kwargs.get("emb_dim", time_dim)) != time_dim:
            raise ValueError("UNet: the label embedding must have the time embedding's dimension (they are added)")
        num_classes = int(cond_kwargs.get("num_classes", 2))
    return UNet(
        a["in_ch"], a["out_ch"], tuple(a["hid_chs"]), tuple(a["kernel_sizes"]), tuple(a["strides"]),
        norm_groups_from_reference(a["norm_name"], 32), time_dim, pos_dim, num_classes, a["num_res_blocks"],
        a["use_attention"], a["spatial_dims"], rngs=rngs,
    )


BUILDERS = {
    "VAE": vae_from_reference,
    "VAEGAN": vaegan_from_reference,
    "Discriminator": discriminator_from_reference,
    "UNet": unet_from_reference,
}


def reference_class_short_name(class_name: str) -> str:
    """'pkg.module.UNet (imported as ...)' -> 'UNet'."""
    return class_name.split()[0].rsplit(".", 1)[-1] if class_name.strip() else ""


def build_from_reference(class_name: str, kwargs: Mapping[str, Any], rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Our module for a reference class (full dotted name or last component) and its constructor kwargs."""
    short = reference_class_short_name(class_name)
    if short not in BUILDERS:
        raise ValueError(f"unknown reference class {class_name!r}: expected one of {sorted(BUILDERS)}")
    return BUILDERS[short](kwargs, rngs or nnx.Rngs(0))
