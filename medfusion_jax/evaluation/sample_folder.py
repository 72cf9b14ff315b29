"""Sample folders: generated images on disk in the ImageFolder layout, resumable image by image.

Layout: ``OUT/<class name>/%06d.png`` (volumes: ``%06d.nii.gz``, NIfTI), ``OUT/grid.png`` (the first
:data:`GRID_COLUMNS` images of every class, one row each; volumes by their mid-slices) and
``OUT/samples.json`` (every setting). The images come from an
:class:`~medfusion_jax.diffusion.pipeline.ImageSampler`, whose image ``i`` of class ``c`` depends on
(seed, class, index, settings) only, so an interrupted set can be completed image by image.

Resume: ``samples.json`` is written before the first image; a rerun into the same folder checks that the
settings that determine the images match it (:data:`IDENTITY_KEYS`, :class:`SampleFolderMismatch`
otherwise) and generates only the PNGs that are missing. Every PNG is written to a temporary file and
renamed into place, so a killed run never leaves a truncated image behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medfusion_jax.diffusion.pipeline import KEY_DERIVATION, ImageSampler
from medfusion_jax.images import (
    NIFTI_SUFFIX,
    image_grid,
    read_nifti,
    read_png,
    write_json_atomic,
    write_nifti_atomic,
    write_png_atomic,
)

MANIFEST = "samples.json"
GRID = "grid.png"
#: Images per class in ``grid.png``.
GRID_COLUMNS = 8
#: Manifest entries that determine the images: a folder can only be completed with the same values.
IDENTITY_KEYS = ("checkpoint", "step", "use_ema", "steps", "eta", "guidance", "seed", "clip_x0", "image_size",
                 "latent_shape", "key_derivation", "random_init")


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


def image_path(out: Path, folder: str, index: int, volumes: bool = False) -> Path:
    return Path(out) / folder / f"{index:06d}{NIFTI_SUFFIX if volumes else '.png'}"


def write_images(paths: Sequence[Path], images: np.ndarray) -> None:
    """Write one batch of images (each atomically): PNGs, or NIfTI files for volumes ``[N, D, H, W, C]``."""
    for path, image in zip(paths, images, strict=True):
        if image.ndim == 4:
            write_nifti_atomic(path, image)
        else:
            write_png_atomic(path, image)


def read_item(path: Path) -> np.ndarray:
    """One generated image (PNG) or volume (NIfTI) back as uint8."""
    return read_nifti(path) if path.name.endswith(NIFTI_SUFFIX) else read_png(path)


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
    for tmp in folder.glob(".*.tmp*"):  # .name.PID.tmp (PNG) and .name.PID.tmp.nii.gz (NIfTI)
        tmp.unlink(missing_ok=True)


def missing_items(out: Path, groups: Sequence[tuple[int | None, str]], num_per_class: int,
                  *, overwrite: bool = False, volumes: bool = False) -> list[tuple[int | None, int, Path]]:
    """(class, index, path) of every requested image not on disk yet (all of them with ``overwrite``)."""
    todo = []
    for cls, folder in groups:
        for index in range(num_per_class):
            path = image_path(out, folder, index, volumes)
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
    process_index: int = 0,
    process_count: int = 1,
    barrier: Callable[[str], None] = lambda name: None,
) -> dict[str, Any]:
    """Generate the images of ``groups`` = [(class or None, folder name), ...] that are not on disk yet.

    ``sampler(items)`` returns uint8 images for (class, index) items (an :class:`ImageSampler`); batches
    hold up to ``batch_size`` (default: the sampler's) items, mixed across classes. Writes the PNGs,
    ``grid.png`` (the first :data:`GRID_COLUMNS` images of every group, one row each) and ``samples.json``
    (``manifest`` plus ``complete`` and the per-folder counts). Returns the final manifest, with
    ``written``: the number of images generated by this call (by this process).

    Several processes (``process_count`` > 1, ``barrier(name)`` waiting for all of them): process 0 checks
    and writes the manifest; every process lists the missing images the same way and generates its
    contiguous share of that list; process 0 then writes the grid and the final manifest. Each image is
    a function of (seed, class, index, settings) only, so the set is the one a single process makes.
    """
    out = Path(out)
    if num_per_class < 1:
        raise ValueError(f"the number of images per class must be positive, got {num_per_class}")
    batch_size = batch_size or sampler.batch_size
    manifest = {**manifest, "num_per_class": num_per_class, "folders": [name for _, name in groups],
                "key_derivation": KEY_DERIVATION}
    if process_index == 0:
        prepare_folder(out, manifest, overwrite=overwrite)
        for _, folder in groups:
            (out / folder).mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(out / folder)
    barrier("sample folder prepared")
    # Volumes when the latents have three spatial axes (the manifest's latent_shape is (..., channels)).
    volumes = len(manifest.get("latent_shape") or ()) == 4
    todo = missing_items(out, groups, num_per_class, overwrite=overwrite, volumes=volumes)
    barrier("missing images listed")  # before any process writes one
    share = len(todo)
    todo = todo[process_index * share // process_count:(process_index + 1) * share // process_count]
    with tqdm(total=len(todo), unit="img", desc="sampling", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images = sampler([(cls, index) for cls, index, _ in chunk])
            write_images([path for _, _, path in chunk], images)
            bar.update(len(chunk))
    barrier("images written")
    pattern = f"[0-9]*{NIFTI_SUFFIX if volumes else '.png'}"
    final = {**manifest, "complete": True,
             "counts": {name: sum(1 for _ in (out / name).glob(pattern)) for _, name in groups}}
    if process_index == 0:
        columns = min(GRID_COLUMNS, num_per_class)
        tiles = [read_item(image_path(out, folder, i, volumes)) for _, folder in groups for i in range(columns)]
        write_png_atomic(out / GRID, image_grid(np.stack(tiles), columns=columns))  # volumes: mid-slices
        write_json_atomic(out / MANIFEST, final)
    barrier("sample folder complete")
    return {**final, "written": len(todo)}
