"""The autoencoder's reconstruction metrics, as Medfusion's ``scripts/evaluate_latent_embedder.py`` (spec 11.2).

For each real image (uint8, divided by 255 and normalised with (0.5, 0.5) to [-1, 1]):

* reconstruction = the VAE's forward output for a **random posterior sample** (``VAE.forward(x)[0]``),
  clamped to [-1, 1]; the posterior noise of image i is drawn from ``fold_in(key(seed), i)``, so the
  numbers do not depend on the batch size;
* MS-SSIM (:func:`~medfusion_jax.metrics.msssim.ms_ssim`: TorchMetrics 0.11, per-image and per-scale
  data range, ``normalize='relu'``) and MSE of the two images mapped to [0, 1];
* SSIM (:func:`~medfusion_jax.metrics.msssim.ssim`: single scale, TorchMetrics 0.11, data range per image)
  of the same pair. The reference script does not report it; it is here because MS-SSIM needs images of
  176 pixels a side, so SSIM is the structural measure left at the sizes a CPU trains (and for volumes);
* LPIPS (:class:`~medfusion_jax.pretrained.lpips.LPIPS`: calibrated AlexNet, TorchMetrics' default) of
  the two images in [-1, 1]; the reference logs ``1 - LPIPS`` as "LPIPS score".

Each is reported per image and as mean +- std over images (unbiased, as ``torch.std``); the paper's
table gives MSE in units of 1e-5. TorchMetrics' 5-scale MS-SSIM needs both image sides above 160
pixels (more precisely ``side // 16 > 10``); for smaller images it is left out (``None``) with a note.
SSIM is left out the same way when a side is shorter than its 11-pixel window (TorchMetrics has no value
there).

Volumes ([D, H, W, C] items, from a 3-D autoencoder) are measured the same way with TorchMetrics' 3-D
SSIM and MS-SSIM (11x11x11 Gaussian window, data range per volume, 2x2x2 pooling; the size rule on every
side, so 5-scale MS-SSIM needs 176^3 volumes) and the MSE over all voxels. LPIPS is a 2-D network with no
3-D counterpart in the reference: for volumes it is left out with a note. The comparison picture shows
each volume by its three orthogonal mid-slices (:func:`medfusion_jax.images.image_grid`).

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
from medfusion_jax.metrics.msssim import mean_std, ms_ssim, mse_per_image, msssim_size_error, ssim
from medfusion_jax.pretrained.lpips import LPIPS, lpips_distance

#: ``reconstruct(x, keys)``: x float32 [B, H, W, C] (or volumes [B, D, H, W, C]) in [-1, 1], keys [B]
#: -> the reconstruction, of x's shape.
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
    """TorchMetrics 0.11's size rule for MS-SSIM: ``side // (scales - 1) ** 2 > window - 1`` (for volumes:
    :func:`~medfusion_jax.metrics.msssim.msssim_size_error` of the three sides)."""
    return msssim_size_error((height, width), scales, window) is None


#: Side of the SSIM window (TorchMetrics' Gaussian of sigma 1.5).
SSIM_WINDOW = 11


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, C] -> float32 in [-1, 1] (ToTensor, then Normalize(0.5, 0.5))."""
    return normalize(np.asarray(images))


def to_uint8_rounded(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8, rounded (for the PNG only)."""
    x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) / 2.0 * 255.0
    return np.round(x).astype(np.uint8)


@dataclasses.dataclass
class ReconstructionResult:
    """Per-image (or per-volume) values in input order, and the first items with their reconstructions."""

    ms_ssim: np.ndarray | None
    mse: np.ndarray
    lpips: np.ndarray | None
    originals: np.ndarray  # uint8 [k, H, W, C] (volumes: [k, D, H, W, C]), k <= NUM_SHOWN
    reconstructions: np.ndarray  # uint8, the same shape
    image_shape: tuple[int, ...]  # (H, W, C) or (D, H, W, C)
    notes: list[str] = dataclasses.field(default_factory=list)
    ssim: np.ndarray | None = None

    @property
    def volumes(self) -> bool:
        return len(self.image_shape) == 4

    @property
    def num_images(self) -> int:
        return int(len(self.mse))

    def summary(self) -> dict[str, Any]:
        """``{"num_images", "image_shape", "ms_ssim", "ssim", "mse", "mse_x1e5", "lpips", "lpips_score",
        "notes"}``; each metric ``{"mean", "std"}`` or None when not computed. ``num_images`` counts volumes
        for volumes. ``mse_x1e5`` is the MSE in units of 1e-5 (the paper's table); ``lpips_score`` is
        1 - LPIPS (what the reference script logs)."""
        def stat(values, scale=1.0, flip=False):
            if values is None:
                return None
            mean, std = mean_std(values)
            return {"mean": (1.0 - mean if flip else mean) * scale, "std": std * scale}

        return {
            "num_images": self.num_images,
            "image_shape": list(self.image_shape),
            "ms_ssim": stat(self.ms_ssim),
            "ssim": stat(self.ssim),
            "mse": stat(self.mse),
            "mse_x1e5": stat(self.mse, 1e5),
            "lpips": stat(self.lpips),
            "lpips_score": stat(self.lpips, flip=True),
            "notes": list(self.notes),
        }

    def comparison_grid(self, pad: int = 2) -> np.ndarray:
        """uint8 [H', W', C] image: the originals in the top row, their reconstructions below (volumes: each
        by its axial, coronal and sagittal mid-slices side by side)."""
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
    """Reconstruct every image (or volume) and measure MS-SSIM, SSIM, MSE and LPIPS per item (see the
    module docstring).

    ``images``: uint8 [H, W, C] images, or [D, H, W, C] volumes, all of one size. Batches are padded to
    ``batch_size`` (repeating the last item, whose results are dropped) so each jitted function compiles
    once. ``lpips_model`` defaults to :class:`LPIPS` with the installed weights (loaded only for images);
    ``with_lpips=False`` leaves LPIPS out, and so do volumes (with a note). LPIPS needs 3 channels:
    single-channel images are repeated to RGB for it. ``on_batch(n)`` is called after each batch with its
    number of items (progress bars).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    base_key = jax.random.key(seed)
    fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(None, 0)))
    msssim_vals, ssim_vals, mse_vals, lpips_vals = [], [], [], []
    shown_orig, shown_rec = [], []
    shape = None
    msssim_error = None
    use_ssim = use_lpips = True
    done = 0
    for batch in _batches(images, batch_size):
        n = len(batch)
        if batch.ndim not in (4, 5):
            raise ValueError(f"expected [H, W, C] images or [D, H, W, C] volumes, got a batch of shape {batch.shape}")
        if shape is None:
            shape = tuple(int(s) for s in batch.shape[1:])
            msssim_error = msssim_size_error(shape[:-1])
            use_ssim = min(shape[:-1]) >= SSIM_WINDOW
            use_lpips = with_lpips and len(shape) == 3
            if use_lpips and lpips_model is None:
                lpips_model = LPIPS()
        elif tuple(batch.shape[1:]) != shape:
            raise ValueError(f"all items must have one size: {shape} then {tuple(batch.shape[1:])}")
        padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, axis=0)]) if n < batch_size else batch
        x = jnp.asarray(to_model_range(padded))
        keys = fold(base_key, jnp.arange(done, done + batch_size, dtype=jnp.uint32))
        rec = jnp.clip(jnp.asarray(reconstruct(x, keys), jnp.float32), -1.0, 1.0)
        if rec.shape != x.shape:
            raise ValueError(f"the reconstruction has shape {rec.shape}, the input {x.shape}")
        real01, fake01 = (x + 1.0) / 2.0, (rec + 1.0) / 2.0
        mse_vals.append(np.asarray(mse_per_image(fake01, real01))[:n])
        if msssim_error is None:
            msssim_vals.append(np.asarray(ms_ssim(fake01, real01))[:n])
        if use_ssim:
            ssim_vals.append(np.asarray(ssim(fake01, real01))[:n])
        if use_lpips:
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
    size = "x".join(str(s) for s in shape[:-1])
    kind, unit = ("volumes", "voxels") if len(shape) == 4 else ("images", "pixels")
    if msssim_error is not None:
        notes.append(f"MS-SSIM left out: {size} {kind} are too small for TorchMetrics' 5 scales "
                     f"(each side // 16 must exceed 10, i.e. at least 176 {unit})")
    if not use_ssim:
        notes.append(f"SSIM left out: a side of the {size} {kind} is shorter than the {SSIM_WINDOW}-{unit[:-1]} "
                     "window")
    if len(shape) == 4:
        notes.append("LPIPS left out: it is a 2-D network (AlexNet features of images); volumes have none")
    elif not with_lpips:
        notes.append("LPIPS left out")
    return ReconstructionResult(
        ms_ssim=np.concatenate(msssim_vals) if msssim_error is None else None,
        mse=np.concatenate(mse_vals),
        lpips=np.concatenate(lpips_vals) if use_lpips else None,
        originals=np.stack(shown_orig),
        reconstructions=np.stack(shown_rec),
        image_shape=shape,
        notes=notes,
        ssim=np.concatenate(ssim_vals) if use_ssim else None,
    )
