"""Per-dataset presets: ``--dataset airogs`` alone reproduces the paper's setting (spec sections 9 and 10).

Presets are plain data: for each data set, the values that differ from the dataclass defaults of
:mod:`medfusion_jax.config`. :func:`autoencoder_config` and :func:`diffusion_config` make them complete
configurations, the one source of every default: the command lines change those with their given flags
(``dataclasses.replace``), and ``eval.demo`` with its own settings.

Paper datasets (the reference's ``train_latent_embedder_2d.py`` / ``train_diffusion.py``):

* CheXpert: 256x256, 8 latent channels, MSE pixel loss (the chest script, the active one), no flips.
* AIROGS: 256x256, 4 latent channels, no flips in the diffusion run and H+V flips in the autoencoder run
  (the script's commented AIROGS block); pixel loss L1 (the class default: only the chest script's MSE
  is recorded, spec 13.1).
* CRC-DX: 512x512 (4 x 64 x 64 latents), 4 latent channels, flips and pixel loss as AIROGS.
* folder (the user's own images): the AIROGS settings at 256x256.

The diffusion stage reads images at the autoencoder's size (from its run directory). Batch 8
(autoencoder) / 32 (diffusion); the reference trains by epochs (at most 1001, early stopping is
not attached) and checkpoints every 50 / 100 steps.

The built-in phantoms (``phantom-cxr``, ``phantom-fundus``, ``phantom-histo``) take the pixel loss and
flips of their real counterpart, with networks, image size and run length scaled down for a CPU, and
settings that ``make demo`` measured to give realistic, diverse images at 64 px (issue 12):

* autoencoder: two downsamplings (4x compression, a 16x16 latent for 64-px images) instead of three, and
  as many latent values as image values (16 channels per 4x4 block of a gray image; 48 for RGB would be
  lossless, :data:`PHANTOM_EMB_CHANNELS` keeps fewer where the phantom's detail allows). Why: the FID
  Inception upsamples 64-px images to 299 px and sees their pixel noise as texture; blurring real
  phantom images by 0.8 px drops precision/recall of real against real images from ~0.75 to ~0, so an
  8x8 latent (the paper's 8x compression) cannot keep what the metrics measure;
* Adam 1e-3 (the paper: 1e-4) and no VGG16 term (it triples the CPU step time): near-lossless
  reconstructions in 2000 steps;
* diffusion: Adam 1e-3 (the paper: 1e-4) and an EMA of the weights (the reference's unused EMAModel)
  for sampling, which after a few thousand steps gives far better samples than the raw weights; batch
  16 (the paper: 32) with the paper's two residual blocks per level: in the same CPU time, twice the
  updates of half the size learn more (measured on phantom-cxr with the demo's autoencoder, 300 samples
  against 500 test images, rate decayed over the last 40 % of the steps: batch 16 x 5200 steps, FID 35.1,
  precision 0.48, recall 0.32; batch 32 x 3300 steps, about 20 % less CPU time, FID 35.0, precision 0.43,
  recall 0.42; one block, batch 32 x 3900 steps, constant rate, about the same time: FID 39.9, precision
  0.31, recall 0.30).

Every paper value stays reachable by the flags (``--hid-chs``, ``--emb-channels``, ``--lr``,
``--perceptual-weight``, ``--no-ema``, ``--batch-size``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from medfusion_jax.config import (
    AutoencoderConfig,
    DataConfig,
    DiffusionConfig,
    GANConfig,
    RunConfig,
    UNetConfig,
    VAEConfig,
)
from medfusion_jax.data import DATASETS

PAPER_EPOCHS = 1001

_AE_PAPER: dict[str, Any] = dict(
    batch_size=8, epochs=PAPER_EPOCHS, checkpoint_every=50, image_every=1000,
    hid_chs=(64, 128, 256, 512), deep_supervision=1,
)
_AE_PHANTOM: dict[str, Any] = dict(
    image_size=64, batch_size=8, steps=2000, checkpoint_every=500, image_every=500,
    hid_chs=(32, 64, 64), deep_supervision=1, lr=1e-3, perceptual_weight=0.0,
)
#: Latent channels of the phantom autoencoders (16x16 latents of 64-px images).
PHANTOM_EMB_CHANNELS = {"phantom-cxr": 16, "phantom-fundus": 48, "phantom-histo": 24}
AUTOENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "chexpert": dict(_AE_PAPER, image_size=256, emb_channels=8, pixel_loss="mse", flips=""),
    "airogs": dict(_AE_PAPER, image_size=256, emb_channels=4, pixel_loss="l1", flips="hv"),
    "crcdx": dict(_AE_PAPER, image_size=512, emb_channels=4, pixel_loss="l1", flips="hv"),
    "folder": dict(_AE_PAPER, image_size=256, emb_channels=4, pixel_loss="l1", flips=""),
    "phantom-cxr": dict(_AE_PHANTOM, emb_channels=PHANTOM_EMB_CHANNELS["phantom-cxr"], pixel_loss="mse", flips=""),
    "phantom-fundus": dict(_AE_PHANTOM, emb_channels=PHANTOM_EMB_CHANNELS["phantom-fundus"], pixel_loss="l1",
                           flips="hv"),
    "phantom-histo": dict(_AE_PHANTOM, emb_channels=PHANTOM_EMB_CHANNELS["phantom-histo"], pixel_loss="l1",
                          flips="hv"),
    # Any CT/MRI volumes: the paper's autoencoder built in 3-D, flips on every axis as the original's
    # SimpleDataset3D; no perceptual term (LPIPS is 2-D); batch 1 (memory per step: bench/memory3d.py).
    "volume-folder": dict(_AE_PAPER, image_size=64, batch_size=1, emb_channels=8, pixel_loss="l1", flips="hvd",
                          perceptual_weight=0.0),
    # Volumes, 32^3 -> 8 x 8^3 latents (two stride-2 levels); left-right flips only (the ventricles'
    # asymmetry is drawn symmetric; up/down and front/back are not symmetric in a head).
    "phantom-brain": dict(_AE_PHANTOM, image_size=32, batch_size=4, steps=1000, checkpoint_every=250,
                          image_every=250, hid_chs=(16, 32, 32), emb_channels=8, pixel_loss="l1", flips="h"),
}

_DIFF_PAPER: dict[str, Any] = dict(
    batch_size=32, epochs=PAPER_EPOCHS, checkpoint_every=100, image_every=1000, flips="",
    hid_chs=(256, 256, 512, 1024), time_emb_dim=1024,
)
_DIFF_PHANTOM: dict[str, Any] = dict(
    batch_size=16, steps=3000, checkpoint_every=500, image_every=500, flips="",
    hid_chs=(64, 64, 128, 128), time_emb_dim=256, sample_steps=50, lr=1e-3, ema=True,
)
DIFFUSION_PRESETS: dict[str, dict[str, Any]] = {
    "chexpert": dict(_DIFF_PAPER),
    "airogs": dict(_DIFF_PAPER),
    "crcdx": dict(_DIFF_PAPER),
    "folder": dict(_DIFF_PAPER),
    "phantom-cxr": dict(_DIFF_PHANTOM),
    "phantom-fundus": dict(_DIFF_PHANTOM),
    "phantom-histo": dict(_DIFF_PHANTOM),
    "volume-folder": dict(_DIFF_PAPER, batch_size=4),
    # One residual block per level: the 3-D demo's measured setting (eval/demo.py, VOLUME_SIZES).
    "phantom-brain": dict(_DIFF_PHANTOM, hid_chs=(32, 32, 64), time_emb_dim=128, num_res_blocks=1),
}


def preset(stage: str, dataset: str) -> dict[str, Any]:
    """The preset values of ``stage`` ('autoencoder' or 'diffusion') for ``dataset``."""
    table = {"autoencoder": AUTOENCODER_PRESETS, "diffusion": DIFFUSION_PRESETS}[stage]
    try:
        return dict(table[dataset])
    except KeyError:
        raise ValueError(f"--dataset {dataset!r} has no preset; choose one of {', '.join(table)}") from None


def levels(hid_chs: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Kernel sizes and strides for ``len(hid_chs)`` levels as every Medfusion network has them: 3x3
    kernels, stride 1 at the first level and 2 after it."""
    return dict(kernel_sizes=(3,) * len(hid_chs), strides=(1,) + (2,) * (len(hid_chs) - 1))


def with_channels(model, hid_chs: tuple[int, ...], **changes: Any):
    """``model`` (a VAEConfig or UNetConfig) with ``hid_chs`` per level, its kernel sizes and strides following
    them (:func:`levels`), and any other ``changes``."""
    return dataclasses.replace(model, hid_chs=tuple(hid_chs), **levels(tuple(hid_chs)), **changes)


def _run(values: dict[str, Any], run_dir: str) -> RunConfig:
    steps = values.get("steps")
    return RunConfig(run_dir=run_dir, batch_size=values["batch_size"], steps=steps,
                     epochs=None if steps is not None else values.get("epochs"),
                     checkpoint_every=values.get("checkpoint_every", RunConfig.checkpoint_every),
                     image_every=values.get("image_every", RunConfig.image_every))


def autoencoder_config(dataset: str, *, gan: bool = False, run_dir: str | None = None) -> AutoencoderConfig:
    """The complete autoencoder configuration of ``dataset``'s preset (``gan``: its VAEGAN stage, spec 5:
    L1 reconstruction term and Adam 1e-6 whatever the data set, GAN terms from the first batch)."""
    values = preset("autoencoder", dataset)
    info = DATASETS[dataset]  # images or volumes, and their channels
    hid_chs = tuple(values["hid_chs"])
    return AutoencoderConfig(
        data=DataConfig(dataset, image_size=values["image_size"], flips=values.get("flips", "")),
        run=_run(values, run_dir or f"runs/{'vaegan' if gan else 'autoencoder'}-{dataset}"),
        model=VAEConfig(emb_channels=values["emb_channels"], hid_chs=hid_chs, **levels(hid_chs),
                        deep_supervision=values["deep_supervision"], in_channels=info.channels,
                        out_channels=info.channels, spatial_dims=info.spatial_dims),
        pixel_loss="l1" if gan else values["pixel_loss"],
        perceptual_weight=values.get("perceptual_weight", AutoencoderConfig.perceptual_weight),
        lr=1e-6 if gan else values.get("lr", AutoencoderConfig.lr),
        gan=GANConfig(disc_hid_chs=hid_chs) if gan else None,
    )


def diffusion_config(dataset: str, *, autoencoder: str, image_size: int,
                     run_dir: str | None = None) -> DiffusionConfig:
    """The complete diffusion configuration of ``dataset``'s preset on the trained ``autoencoder`` (its
    images are read at the autoencoder's ``image_size``)."""
    values = preset("diffusion", dataset)
    hid_chs = tuple(values["hid_chs"])
    model = UNetConfig(hid_chs=hid_chs, **levels(hid_chs), time_emb_dim=values["time_emb_dim"],
                       spatial_dims=DATASETS[dataset].spatial_dims)
    optional = {k: values[k] for k in ("num_res_blocks",) if k in values}
    return DiffusionConfig(
        data=DataConfig(dataset, image_size=image_size, flips=values.get("flips", "")),
        run=_run(values, run_dir or f"runs/diffusion-{dataset}"),
        autoencoder=autoencoder,
        model=dataclasses.replace(model, **optional),
        **{k: values[k] for k in ("lr", "ema", "sample_steps") if k in values},
    )
