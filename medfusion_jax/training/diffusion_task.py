"""The diffusion stage's train state and step function (spec sections 7.2 and 9); no data handling.

Train state::

    params:    {"unet": ...}
    opt_state: {"unet": AdamW state}      (lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01)
    ema:       {"unet": ...}              (only with --ema)
    progress:  {"step": int32, "rng": uint32[2] key data}

Constants: ``{"schedule": NoiseSchedule}`` plus ``{"vae": frozen autoencoder weights}`` when latents are
encoded on the fly. Latents: z_0 = mean + exp(logvar / 2) eps from the frozen encoder's posterior, a new
sample every step (the reference's ``VAE.encode``), either from the images of the batch or from a
cache of (mean, log-variance) per image, which gives the same distribution of z_0 without running the
encoder. The loss is :func:`medfusion_jax.losses.diffusion.diffusion_loss`.

EMA (off by default, as the reference): ema <- d ema + (1 - d) params after every step with
d = min(ema_max_decay, 1 - (1 + n)^(-2/3)), n the number of earlier updates (the warm-up of the
reference's unused ``EMAModel``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from medfusion_jax.config import DiffusionConfig
from medfusion_jax.diffusion.pipeline import generate_images
from medfusion_jax.diffusion.schedule import schedule_from_config
from medfusion_jax.images import image_grid
from medfusion_jax.layers import set_remat
from medfusion_jax.losses.diffusion import diffusion_loss
from medfusion_jax.models import UNet
from medfusion_jax.models.vae import reparameterize
from medfusion_jax.run_folder import build, split_params, unet_kwargs
from medfusion_jax.training.learning_rate import learning_rate
from medfusion_jax.training.state import advance, new_progress, step_key

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
    """Everything static about a diffusion step (hashable): the graph definitions, whether the model is
    conditional, and the run's configuration, the one source of every loss, optimiser and EMA setting."""

    unet_graph: nnx.GraphDef
    vae_graph: nnx.GraphDef
    conditional: bool
    config: DiffusionConfig


def optimizer(spec: DiffusionSpec) -> optax.GradientTransformation:
    """torch.optim.AdamW defaults except the learning rate; note weight decay 0.01 (optax's default is 1e-4).
    As torch's AdamW, the decoupled weight decay is scaled by the (scheduled) learning rate."""
    config = spec.config
    return optax.adamw(learning_rate(config.lr, config.lr_decay_start, config.lr_decay_end), b1=0.9, b2=0.999,
                       eps=1e-8, weight_decay=config.weight_decay)


def init_diffusion(
    config: DiffusionConfig,
    *,
    vae_graph: nnx.GraphDef,
    vae_params: dict,
    latent_channels: int,
    num_classes: int | None,
) -> tuple[DiffusionSpec, State, dict[str, Any], dict[str, Any]]:
    """(spec, initial train state, constants, UNet constructor kwargs) for ``config``.

    ``num_classes`` None trains an unconditional model (data without classes).
    """
    kwargs = unet_kwargs(config.model, latent_channels, num_classes)
    unet = build(UNet, kwargs, seed=config.run.seed, dtype=config.run.dtype)
    set_remat(unet, config.run.remat)
    unet_graph, unet_params = split_params(unet)
    spec = DiffusionSpec(
        unet_graph=unet_graph,
        vae_graph=vae_graph,
        conditional=num_classes is not None,
        config=config,
    )
    state = {
        "params": {"unet": unet_params},
        "opt_state": {"unet": optimizer(spec).init(unet_params)},
        "progress": new_progress(config.run.seed),
    }
    if spec.config.ema:
        state["ema"] = {"unet": jax.tree.map(jnp.copy, unet_params)}
    schedule = schedule_from_config(config.schedule)
    constants: dict[str, Any] = {"schedule": schedule}
    if not spec.config.cache_latents:
        constants["vae"] = vae_params
    return spec, state, constants, kwargs


def ema_decay(updates_done: jax.Array, max_decay: float) -> jax.Array:
    return jnp.minimum(max_decay, 1.0 - (1.0 + updates_done.astype(jnp.float32)) ** (-2.0 / 3.0))


def clean_latents(batch: dict[str, jax.Array], constants: dict[str, Any], key: jax.Array, *,
                  spec: DiffusionSpec) -> jax.Array:
    """z_0: a posterior sample of the frozen encoder (from the images, or from cached moments)."""
    if spec.config.cache_latents:
        mean, logvar = batch["mean"], batch["logvar"]
    else:
        vae = nnx.merge(spec.vae_graph, constants["vae"])
        mean, logvar = vae.posterior(batch["image"])
    return jax.lax.stop_gradient(reparameterize(mean, logvar, key=key))


def diffusion_train_step(state: State, constants: dict[str, Any], batch: dict[str, jax.Array], *,
                         spec: DiffusionSpec) -> tuple[State, dict[str, jax.Array]]:
    """One AdamW step of the noise estimator on one batch."""
    key_latent, key_loss = jax.random.split(step_key(state["progress"]))
    z0 = clean_latents(batch, constants, key_latent, spec=spec)
    labels = batch["label"] if spec.conditional else None

    def loss_fn(unet_params):
        unet = nnx.merge(spec.unet_graph, unet_params)
        return diffusion_loss(unet, constants["schedule"], z0, labels, key_loss, cfg_dropout=spec.config.cfg_dropout,
                              per_sample_cfg_dropout=spec.config.per_sample_cfg_dropout)

    params = state["params"]["unet"]
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer(spec).update(grads, state["opt_state"]["unet"], params)
    params = optax.apply_updates(params, updates)
    new_state = {
        "params": {"unet": params},
        "opt_state": {"unet": opt_state},
        "progress": advance(state["progress"]),
    }
    if spec.config.ema:
        decay = ema_decay(state["progress"]["step"], spec.config.ema_max_decay)
        new_state["ema"] = {"unet": jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                                                 state["ema"]["unet"], params)}
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **terms}
    return new_state, metrics


def sample_grid(state: State, constants: dict[str, Any], vae_params: dict, *, spec: DiffusionSpec,
                classes: list[int] | None, per_class: int, latent_size: tuple[int, ...], num_steps: int,
                guidance_scale: float, seed: int) -> np.ndarray:
    """A uint8 grid with one row of ``per_class`` samples per class (EMA weights when kept).

    Fixed noise (``seed``) so that grids of successive steps are comparable.
    """
    params = (state["ema"] if spec.config.ema else state["params"])["unet"]
    unet = nnx.merge(spec.unet_graph, params)
    vae = nnx.merge(spec.vae_graph, vae_params)
    key = jax.random.key(seed)
    rows = []
    for row, cls in enumerate(classes if classes is not None else [None]):
        labels = None if cls is None else jnp.full((per_class,), cls, jnp.int32)
        rows.append(generate_images(unet, vae, constants["schedule"], labels, jax.random.fold_in(key, row),
                                    latent_size=latent_size, batch_size=per_class, num_steps=num_steps,
                                    guidance_scale=guidance_scale))
    return image_grid(np.concatenate(rows), columns=per_class)
