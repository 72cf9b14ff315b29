"""From noise to images: DDIM in the latent space, decoding, the reference's uint8 conversion, and
writing sample sets to disk.

Two levels:

* :func:`generate_images`: a batch of uint8 images from one key (the training previews use it).
* :class:`ImageSampler` and :func:`sample_to_folder`: sample sets for evaluation, one PNG per image in the
  ImageFolder layout (``OUT/<class name>/%06d.png``, ``OUT/grid.png``, ``OUT/samples.json``).

Keys: image ``i`` of class ``c`` is drawn from ``fold_in(fold_in(key(seed), c), i)`` alone (its starting
latent and every DDIM step noise; see ``per_sample_keys`` of
:func:`~medfusion_jax.diffusion.sampler.sample_latents`). An image is therefore a function of (seed, class,
index, settings): which other images share its batch, its position there, and which of them already exist
on disk do not matter, so an interrupted set can be completed image by image. The batch *size* (per
device) can still change the last float32 bits of the convolutions, which after 150 steps may move a few
pixels by one uint8 level; for a bit-identical result keep the per-device batch size (every batch is
padded to the full size, so the shape never changes within a run).

Resume: ``samples.json`` is written before the first image; a rerun into the same folder checks that the
settings that determine the images match it (:data:`IDENTITY_KEYS`, :class:`SampleFolderMismatch`
otherwise) and generates only the PNGs that are missing. Every PNG is written to a temporary file and
renamed into place, so a killed run never leaves a truncated image behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from PIL import Image
from tqdm import tqdm

from medfusion_jax.diffusion.sampler import sample_latents
from medfusion_jax.diffusion.schedule import NoiseSchedule
from medfusion_jax.models import VAE, UNet
from medfusion_jax.mesh import batch_sharding, make_mesh, replicated

MANIFEST = "samples.json"
GRID = "grid.png"
#: Images per class in ``grid.png``.
GRID_COLUMNS = 8
#: How image keys are derived; part of the manifest so that a future change cannot silently mix sets.
KEY_DERIVATION = "v1: image key = fold_in(fold_in(key(seed), class), index); split -> (x_T key, step keys)"
#: Manifest entries that determine the images: a folder can only be completed with the same values.
IDENTITY_KEYS = ("checkpoint", "step", "use_ema", "steps", "eta", "guidance", "seed", "clip_x0", "image_size",
                 "latent_shape", "key_derivation", "random_init")
#: The class code of an unconditional model's images (it has no classes).
UNCONDITIONAL = 0


def to_uint8(images: jax.Array) -> np.ndarray:
    """clip to [-1, 1], (x + 1) / 2 * 255, then *truncate* to uint8, as the reference's sample_dataset.py."""
    x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) / 2.0 * 255.0
    return x.astype(np.uint8)


def generate_images(
    unet: UNet,
    vae: VAE,
    schedule: NoiseSchedule,
    labels: jax.Array | None,
    key: jax.Array,
    *,
    latent_size: tuple[int, int],
    batch_size: int | None = None,
    num_steps: int = 150,
    eta: float = 1.0,
    guidance_scale: float = 1.0,
) -> np.ndarray:
    """uint8 NHWC images for ``labels`` (or ``batch_size`` unconditional ones): DDIM, then ``vae.decode``."""
    n = batch_size if labels is None else int(labels.shape[0])
    latents = sample_latents(unet, schedule, key, (n, *latent_size, unet.in_ch), labels, num_steps=num_steps,
                             eta=eta, guidance_scale=guidance_scale)
    return to_uint8(_decode(vae, latents))


@nnx.jit
def _decode(vae: VAE, latents: jax.Array) -> jax.Array:
    return vae.decode(latents)


def image_grid(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tile uint8 NHWC images into one HWC image, row-major, with ``pad`` black pixels between tiles."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
    return grid


# -- per-image keys and sharded batches ------------------------------------------------------------------


@jax.jit
def _fold_keys(base: jax.Array, classes: jax.Array, indices: jax.Array) -> jax.Array:
    return jax.vmap(lambda c, i: jax.random.fold_in(jax.random.fold_in(base, c), i))(classes, indices)


def image_keys(seed: int, classes: Sequence[int | None], indices: Sequence[int]) -> jax.Array:
    """One key per image: ``fold_in(fold_in(key(seed), class), index)`` (class None: unconditional)."""
    codes = np.asarray([UNCONDITIONAL if c is None else c for c in classes], np.uint32)
    return _fold_keys(jax.random.key(seed), jnp.asarray(codes), jnp.asarray(np.asarray(indices, np.uint32)))


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """What, besides the networks and the keys, determines an image."""

    num_steps: int = 150
    eta: float = 1.0
    guidance_scale: float = 1.0
    clip_x0: bool = False
    seed: int = 0


@partial(jax.jit, static_argnames=("unet_graph", "vae_graph", "shape", "num_steps", "guidance_scale", "clip_x0",
                                   "conditional"))
def _sample_and_decode(unet_graph, unet_params, vae_graph, vae_params, schedule, keys, labels, eta, *, shape,
                       num_steps, guidance_scale, clip_x0, conditional):
    unet = nnx.merge(unet_graph, unet_params)
    vae = nnx.merge(vae_graph, vae_params)
    latents = sample_latents(unet, schedule, keys, shape, labels if conditional else None, num_steps=num_steps,
                             eta=eta, clip_x0=clip_x0, guidance_scale=guidance_scale, per_sample_keys=True)
    return vae.decode(latents)


class ImageSampler:
    """Decoded uint8 images for lists of (class, index) items, one padded batch at a time.

    The networks' weights are replicated over ``mesh`` (default: every device), and each batch (keys and
    labels) is split along its first axis over the mesh's devices; jit partitions the rest. The batch size
    is rounded up to a multiple of the device count; shorter lists are padded and the padding dropped, so
    every call has the same shapes and compiles once.
    """

    def __init__(self, unet: UNet, vae: VAE, schedule: NoiseSchedule, *, latent_size: tuple[int, int],
                 settings: SampleSettings, batch_size: int, mesh: Mesh | None = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.mesh = mesh or make_mesh()
        devices = self.mesh.devices.size
        self.batch_size = -(-batch_size // devices) * devices
        self.settings = settings
        self.conditional = unet.num_classes is not None
        self.num_classes = unet.num_classes
        self.latent_shape = (*latent_size, unet.in_ch)
        rep = replicated(self.mesh)
        self._unet_graph, unet_params = nnx.split(unet)
        self._vae_graph, vae_params = nnx.split(vae)
        self._unet_params = jax.device_put(unet_params, rep)
        self._vae_params = jax.device_put(vae_params, rep)
        self._schedule = jax.device_put(schedule, rep)
        self._batch = batch_sharding(self.mesh)

    def __call__(self, items: Sequence[tuple[int | None, int]]) -> np.ndarray:
        """uint8 NHWC images for ``items`` = [(class or None, index), ...] (at most ``batch_size``)."""
        n = len(items)
        if not 0 < n <= self.batch_size:
            raise ValueError(f"between 1 and {self.batch_size} items per call, got {n}")
        for cls, _ in items:
            if self.conditional and (cls is None or not 0 <= cls < self.num_classes):
                raise ValueError(f"class {cls!r}: the model has classes 0..{self.num_classes - 1}")
            if not self.conditional and cls is not None:
                raise ValueError(f"class {cls!r}: the model is unconditional (no classes)")
        padded = list(items) + [items[0]] * (self.batch_size - n)
        classes = [c for c, _ in padded]
        keys = jax.device_put(image_keys(self.settings.seed, classes, [i for _, i in padded]), self._batch)
        labels = jax.device_put(np.asarray([0 if c is None else c for c in classes], np.int32), self._batch)
        s = self.settings
        images = _sample_and_decode(
            self._unet_graph, self._unet_params, self._vae_graph, self._vae_params, self._schedule, keys, labels,
            jnp.float32(s.eta), shape=(self.batch_size, *self.latent_shape), num_steps=s.num_steps,
            guidance_scale=float(s.guidance_scale), clip_x0=bool(s.clip_x0), conditional=self.conditional)
        return to_uint8(np.asarray(images)[:n])


# -- sample folders -----------------------------------------------------------------------------------


class SampleFolderError(ValueError):
    """The output folder cannot take this sample set (the message says why and what to do)."""


class SampleFolderMismatch(SampleFolderError):
    """An output folder holds samples made with other settings; names every differing setting."""

    def __init__(self, out: Path, differing: dict[str, tuple[Any, Any]]):
        self.differing = differing
        parts = ", ".join(f"{k} (folder: {a!r}, now: {b!r})" for k, a, b in
                          ((k, *v) for k, v in differing.items()))
        super().__init__(f"{out} holds samples made with other settings: {parts}; "
                         "use another output folder or --overwrite")


def image_path(out: Path, folder: str, index: int) -> Path:
    return Path(out) / folder / f"{index:06d}.png"


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write ``image`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def write_images(paths: Sequence[Path], images: np.ndarray) -> None:
    """Write one batch of images (each atomically)."""
    for path, image in zip(paths, images, strict=True):
        write_png_atomic(path, image)


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SampleFolderError(f"{path}: not valid JSON ({err}); use another output folder or --overwrite") from None


def prepare_folder(out: Path, manifest: dict[str, Any], *, overwrite: bool = False) -> None:
    """Check ``out`` against ``manifest`` (see :data:`IDENTITY_KEYS`), then write the manifest.

    A folder with files but no manifest is refused (it is not a sample folder), as is a manifest whose
    identity settings differ, unless ``overwrite``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SampleFolderError(f"{out}: exists and is not a folder")
    saved = _read_manifest(out) if out.exists() else None
    if not overwrite:
        if saved is None and out.exists() and any(out.iterdir()):
            raise SampleFolderError(f"{out}: not empty and has no {MANIFEST} (not a sample folder); "
                             "use another output folder or --overwrite")
        if saved is not None:
            differing = {k: (saved.get(k), manifest.get(k)) for k in IDENTITY_KEYS
                         if _jsonable(saved.get(k)) != _jsonable(manifest.get(k))}
            if differing:
                raise SampleFolderMismatch(out, differing)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / MANIFEST, {**manifest, "complete": False})


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _remove_stale_temporaries(folder: Path) -> None:
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def missing_items(out: Path, groups: Sequence[tuple[int | None, str]], num_per_class: int,
                  *, overwrite: bool = False) -> list[tuple[int | None, int, Path]]:
    """(class, index, path) of every requested image not on disk yet (all of them with ``overwrite``)."""
    todo = []
    for cls, folder in groups:
        for index in range(num_per_class):
            path = image_path(out, folder, index)
            if overwrite or not path.is_file():
                todo.append((cls, index, path))
    return todo


def sample_to_folder(
    sampler: Callable[[Sequence[tuple[int | None, int]]], np.ndarray] | ImageSampler,
    out: str | Path,
    *,
    groups: Sequence[tuple[int | None, str]],
    num_per_class: int,
    manifest: dict[str, Any],
    batch_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the images of ``groups`` = [(class or None, folder name), ...] that are not on disk yet.

    ``sampler(items)`` returns uint8 images for (class, index) items (an :class:`ImageSampler`); batches
    hold up to ``batch_size`` (default: the sampler's) items, mixed across classes. Writes the PNGs,
    ``grid.png`` (the first :data:`GRID_COLUMNS` images of every group, one row each) and ``samples.json``
    (``manifest`` plus ``complete`` and the per-folder counts). Returns the final manifest, with
    ``written``: the number of images generated by this call.
    """
    out = Path(out)
    if num_per_class < 1:
        raise ValueError(f"the number of images per class must be positive, got {num_per_class}")
    batch_size = batch_size or sampler.batch_size
    manifest = {**manifest, "num_per_class": num_per_class, "folders": [name for _, name in groups],
                "key_derivation": KEY_DERIVATION}
    prepare_folder(out, manifest, overwrite=overwrite)
    for _, folder in groups:
        (out / folder).mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out / folder)
    todo = missing_items(out, groups, num_per_class, overwrite=overwrite)
    with tqdm(total=len(todo), unit="img", desc="sampling", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images = sampler([(cls, index) for cls, index, _ in chunk])
            write_images([path for _, _, path in chunk], images)
            bar.update(len(chunk))
    columns = min(GRID_COLUMNS, num_per_class)
    tiles = [_read_png(image_path(out, folder, i)) for _, folder in groups for i in range(columns)]
    write_png_atomic(out / GRID, image_grid(np.stack(tiles), columns=columns))
    final = {**manifest, "complete": True,
             "counts": {name: sum(1 for _ in (out / name).glob("[0-9]*.png")) for _, name in groups}}
    write_json_atomic(out / MANIFEST, final)
    return {**final, "written": len(todo)}


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        a = np.asarray(img)
    return a[..., None] if a.ndim == 2 else a
