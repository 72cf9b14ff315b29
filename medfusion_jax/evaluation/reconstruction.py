"""The autoencoder's reconstruction metrics, as Medfusion's ``scripts/evaluate_latent_embedder.py`` (spec 11.2).

For each real image (uint8, divided by 255 and normalised with (0.5, 0.5) to [-1, 1]):

* reconstruction = the VAE's forward output for a **random posterior sample** (``VAE.forward(x)[0]``),
  clamped to [-1, 1]; the posterior noise of image i is drawn from ``fold_in(key(seed), i)``, so the
  numbers do not depend on the batch size;
* MS-SSIM (:func:`~medfusion_jax.metrics.msssim.ms_ssim`: TorchMetrics 0.11, per-image and per-scale
  data range, ``normalize='relu'``) and MSE of the two images mapped to [0, 1];
* LPIPS (:class:`~medfusion_jax.pretrained.lpips.LPIPS`: calibrated AlexNet, TorchMetrics' default) of
  the two images in [-1, 1]; the reference logs ``1 - LPIPS`` as "LPIPS score".

Each is reported per image and as mean +- std over images (unbiased, as ``torch.std``); the paper's
table gives MSE in units of 1e-5. TorchMetrics' 5-scale MS-SSIM needs both image sides above 160
pixels (more precisely ``side // 16 > 10``); for smaller images it is left out (``None``) with a note.

:func:`evaluate_reconstruction` takes any ``reconstruct(x, keys)`` callable, so it also measures
other autoencoders (or an identity, in the tests); :func:`vae_reconstructor` makes one of a
:class:`~medfusion_jax.models.VAE` (one jitted forward per batch shape); the VAE itself comes from
:func:`medfusion_jax.convert.autoencoder.load_autoencoder` (a run or an original checkpoint).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medfusion_jax.data import normalize
from medfusion_jax.images import image_grid
from medfusion_jax.metrics.msssim import mean_std, ms_ssim, mse_per_image
from medfusion_jax.pretrained.lpips import LPIPS, lpips_distance

#: ``reconstruct(x, keys)``: x float32 [B, H, W, C] in [-1, 1], keys [B] -> reconstruction [B, H, W, C].
ReconstructFn = Callable[[jax.Array, jax.Array], jax.Array]
#: Images of the PNG (the reference's sample grids show 8).
NUM_SHOWN = 8


# -- models --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _vae_forward(graph, params, x, keys):
    model = nnx.merge(graph, params)
    mean, logvar = model.posterior(x)
    noise = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(keys)
    z = mean + jnp.exp(0.5 * logvar) * noise
    return model.decode(z.astype(x.dtype)).astype(jnp.float32)


def vae_reconstructor(vae) -> ReconstructFn:
    """``reconstruct(x, keys)`` of a VAE: encode, one posterior sample per image from its key, decode.

    The same as the reference's ``VAE.forward(x)[0]`` (the deep-supervision heads do not change the
    full-resolution output, so they are not computed). Jitted; compiles once per architecture and
    batch shape.
    """
    graph, params = nnx.split(vae)
    return lambda x, keys: _vae_forward(graph, params, x, keys)


# -- metrics -------------------------------------------------------------------------------------------


def msssim_supported(height: int, width: int, scales: int = 5, window: int = 11) -> bool:
    """TorchMetrics 0.11's size rule for MS-SSIM: ``side // (scales - 1) ** 2 > window - 1``."""
    div = max(1, scales - 1) ** 2
    return height // div > window - 1 and width // div > window - 1


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, C] -> float32 in [-1, 1] (ToTensor, then Normalize(0.5, 0.5))."""
    return normalize(np.asarray(images))


def to_uint8_rounded(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8, rounded (for the PNG only)."""
    x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) / 2.0 * 255.0
    return np.round(x).astype(np.uint8)


@dataclasses.dataclass
class ReconstructionResult:
    """Per-image values (in input order) and the first images with their reconstructions."""

    ms_ssim: np.ndarray | None
    mse: np.ndarray
    lpips: np.ndarray | None
    originals: np.ndarray  # uint8 [k, H, W, C], k <= NUM_SHOWN
    reconstructions: np.ndarray  # uint8, the same shape
    image_shape: tuple[int, int, int]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_images(self) -> int:
        return int(len(self.mse))

    def summary(self) -> dict[str, Any]:
        """``{"num_images", "image_shape", "ms_ssim", "mse", "mse_x1e5", "lpips", "lpips_score", "notes"}``;
        each metric ``{"mean", "std"}`` or None when not computed. ``mse_x1e5`` is the MSE in units of
        1e-5 (the paper's table); ``lpips_score`` is 1 - LPIPS (what the reference script logs)."""
        def stat(values, scale=1.0, flip=False):
            if values is None:
                return None
            mean, std = mean_std(values)
            return {"mean": (1.0 - mean if flip else mean) * scale, "std": std * scale}

        return {
            "num_images": self.num_images,
            "image_shape": list(self.image_shape),
            "ms_ssim": stat(self.ms_ssim),
            "mse": stat(self.mse),
            "mse_x1e5": stat(self.mse, 1e5),
            "lpips": stat(self.lpips),
            "lpips_score": stat(self.lpips, flip=True),
            "notes": list(self.notes),
        }

    def comparison_grid(self, pad: int = 2) -> np.ndarray:
        """uint8 [H', W', C] image: the originals in the top row, their reconstructions below."""
        return image_grid(np.concatenate([self.originals, self.reconstructions]), columns=len(self.originals),
                          pad=pad)


def _batches(images: Iterable[np.ndarray], batch_size: int):
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(np.asarray(image))
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def evaluate_reconstruction(
    images: Iterable[np.ndarray],
    reconstruct: ReconstructFn,
    *,
    batch_size: int = 16,
    seed: int = 0,
    lpips_model: LPIPS | None = None,
    with_lpips: bool = True,
    num_shown: int = NUM_SHOWN,
    on_batch: Callable[[int], Any] | None = None,
) -> ReconstructionResult:
    """Reconstruct every image and measure MS-SSIM, MSE and LPIPS per image (see the module docstring).

    ``images``: uint8 [H, W, C] arrays of one size. Batches are padded to ``batch_size`` (repeating the
    last image, whose results are dropped) so each jitted function compiles once. ``lpips_model``
    defaults to :class:`LPIPS` with the installed weights; ``with_lpips=False`` leaves LPIPS out.
    LPIPS needs 3 channels: single-channel images are repeated to RGB for it. ``on_batch(n)`` is
    called after each batch with its number of images (progress bars).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if with_lpips and lpips_model is None:
        lpips_model = LPIPS()
    base_key = jax.random.key(seed)
    fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(None, 0)))
    msssim_vals, mse_vals, lpips_vals = [], [], []
    shown_orig, shown_rec = [], []
    shape = None
    use_msssim = True
    done = 0
    for batch in _batches(images, batch_size):
        n = len(batch)
        if batch.ndim != 4:
            raise ValueError(f"expected [H, W, C] images, got a batch of shape {batch.shape}")
        if shape is None:
            shape = tuple(int(s) for s in batch.shape[1:])
            use_msssim = msssim_supported(shape[0], shape[1])
        elif tuple(batch.shape[1:]) != shape:
            raise ValueError(f"all images must have one size: {shape} then {tuple(batch.shape[1:])}")
        padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, axis=0)]) if n < batch_size else batch
        x = jnp.asarray(to_model_range(padded))
        keys = fold(base_key, jnp.arange(done, done + batch_size, dtype=jnp.uint32))
        rec = jnp.clip(jnp.asarray(reconstruct(x, keys), jnp.float32), -1.0, 1.0)
        if rec.shape != x.shape:
            raise ValueError(f"the reconstruction has shape {rec.shape}, the input {x.shape}")
        real01, fake01 = (x + 1.0) / 2.0, (rec + 1.0) / 2.0
        mse_vals.append(np.asarray(mse_per_image(fake01, real01))[:n])
        if use_msssim:
            msssim_vals.append(np.asarray(ms_ssim(fake01, real01))[:n])
        if with_lpips:
            a, b = (x, rec) if x.shape[-1] == 3 else (jnp.repeat(x, 3, axis=-1), jnp.repeat(rec, 3, axis=-1))
            lpips_vals.append(np.asarray(lpips_distance(lpips_model, a, b))[:n])
        if len(shown_orig) < num_shown:
            k = min(num_shown - len(shown_orig), n)
            shown_orig.extend(batch[:k].astype(np.uint8))
            shown_rec.extend(to_uint8_rounded(np.asarray(rec[:k])))
        done += n
        if on_batch is not None:
            on_batch(n)
    if shape is None:
        raise ValueError("no images to evaluate")
    notes = []
    if not use_msssim:
        notes.append(f"MS-SSIM left out: {shape[0]}x{shape[1]} images are too small for TorchMetrics' 5 scales "
                     "(each side // 16 must exceed 10, i.e. at least 176 pixels)")
    if not with_lpips:
        notes.append("LPIPS left out")
    return ReconstructionResult(
        ms_ssim=np.concatenate(msssim_vals) if use_msssim else None,
        mse=np.concatenate(mse_vals),
        lpips=np.concatenate(lpips_vals) if with_lpips else None,
        originals=np.stack(shown_orig),
        reconstructions=np.stack(shown_rec),
        image_shape=shape,
        notes=notes,
    )
