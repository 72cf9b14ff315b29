"""VAEGAN losses (spec section 5.3): hinge discriminator loss, summed generator term, adaptive weight."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from medfusion_jax.losses.autoencoder import head_target_area, reconstruction_loss
from medfusion_jax.models.discriminator import VAEGAN
from medfusion_jax.models.vae import kl_divergence, reparameterize

ADAPTIVE_WEIGHT_MAX = 1e4


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def generator_adversarial_loss(logits_fake: jax.Array) -> jax.Array:
    """-sum D(fake): the reference uses the *sum* of logits (no mean, no clamp)."""
    return -jnp.sum(logits_fake)


def adaptive_weight(
    rec_fn: Callable[[jax.Array], jax.Array],
    gan_fn: Callable[[jax.Array], jax.Array],
    last_layer: Callable[[jax.Array], jax.Array],
    kernel: jax.Array,
) -> jax.Array:
    """lambda = ||d rec / d W|| / (||d gan / d W|| + 1e-4), clamped to [0, 1e4], gradient stopped.

    ``last_layer(W)`` produces the output from the last layer's weight W; ``rec_fn``/``gan_fn`` map that
    output to the two loss terms. Gradients are taken with respect to W, as the reference's
    ``torch.autograd.grad(loss, last_layer_weight)``.
    """
    g_rec = jax.grad(lambda w: rec_fn(last_layer(w)))(kernel)
    g_gan = jax.grad(lambda w: gan_fn(last_layer(w)))(kernel)
    weight = jnp.linalg.norm(g_rec) / (jnp.linalg.norm(g_gan) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, ADAPTIVE_WEIGHT_MAX))


def vaegan_losses(
    model: VAEGAN,
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    noise: jax.Array | None = None,
    perceptual_fn=None,
    perceptual_weight: float = 1.0,
    gan_weight: float = 1.0,
    kl_weight: float = 1e-6,
    gan_active: bool = True,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(generator loss, discriminator loss, terms) of ``VAEGAN._step`` for one posterior sample.

    Output d = 0 is the reconstruction (target x), d = j + 1 the deep-supervision head j (target: area
    downsampling of x). Generator: sum_d rec_d + gan_weight * lambda_d * gan_d, plus kl_weight * KL; the
    pixel term is L1 (the inner VAE's loss). Discriminator: sum_d hinge on (target_d, stop_gradient(p_d)).
    With ``gan_active`` False (step <= start_gan_train_step) the adversarial terms are left out.
    The reference draws a new posterior sample for the discriminator pass; callers that want that call
    this twice with different keys.
    """
    vae = model.vqvae
    mean, logvar = vae.posterior(x)
    kl = kl_divergence(mean, logvar)
    features, head_features = vae.decoder_features(reparameterize(mean, logvar, key=key, noise=noise))
    last_layers = [(vae.outc, features)] + list(zip(vae.outc_ver, head_features, strict=True))

    gen_loss = kl_weight * kl
    disc_loss = jnp.zeros((), jnp.float32)
    terms: dict[str, jax.Array] = {"kl": kl}
    for d, (layer, feats) in enumerate(last_layers):
        conv = layer.conv
        pred = conv(feats)
        target = x if d == 0 else head_target_area(x, pred)
        disc = model.discriminator[d]

        def rec_fn(p, target=target):
            return reconstruction_loss(p, target, pixel_loss="l1", perceptual_fn=perceptual_fn,
                                       perceptual_weight=perceptual_weight)

        def gan_fn(p, disc=disc):
            return generator_adversarial_loss(disc(p))

        rec = rec_fn(pred)
        terms[f"rec_loss_{d}"] = rec
        terms[f"pred_{d}"] = pred
        gen_loss = gen_loss + rec
        if gan_active:
            gan = gan_fn(pred)
            weight = adaptive_weight(rec_fn, gan_fn, lambda w, conv=conv, feats=feats: conv.with_kernel(feats, w),
                                     conv.kernel[...])
            terms[f"gan_loss_raw_{d}"] = gan
            terms[f"lambda_{d}"] = weight
            gen_loss = gen_loss + gan_weight * weight * gan
            disc_loss = disc_loss + hinge_d_loss(disc(target), disc(jax.lax.stop_gradient(pred)))
    return gen_loss, disc_loss, terms
