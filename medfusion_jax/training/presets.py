"""Per-dataset presets: ``--dataset airogs`` alone reproduces the paper's setting (spec sections 9 and 10).

Presets are plain data: for each data set, the values that differ from the dataclass defaults of
:mod:`medfusion_jax.training.config`. Every value can be overridden by a flag of the command lines.

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

The built-in phantoms (``phantom-cxr``, ``phantom-fundus``, ``phantom-histo``) take the loss settings of
their real counterpart with networks, image size and run length scaled down for a CPU.
"""

from __future__ import annotations

from typing import Any

PAPER_EPOCHS = 1001

_AE_PAPER: dict[str, Any] = dict(
    batch_size=8, epochs=PAPER_EPOCHS, checkpoint_every=50, image_every=1000,
    hid_chs=(64, 128, 256, 512), deep_supervision=1,
)
_AE_PHANTOM: dict[str, Any] = dict(
    image_size=64, batch_size=8, steps=3000, checkpoint_every=500, image_every=500,
    hid_chs=(32, 64, 64, 64), deep_supervision=1,
)
AUTOENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "chexpert": dict(_AE_PAPER, image_size=256, emb_channels=8, pixel_loss="mse", flips=""),
    "airogs": dict(_AE_PAPER, image_size=256, emb_channels=4, pixel_loss="l1", flips="hv"),
    "crcdx": dict(_AE_PAPER, image_size=512, emb_channels=4, pixel_loss="l1", flips="hv"),
    "folder": dict(_AE_PAPER, image_size=256, emb_channels=4, pixel_loss="l1", flips=""),
    "phantom-cxr": dict(_AE_PHANTOM, emb_channels=8, pixel_loss="mse", flips=""),
    "phantom-fundus": dict(_AE_PHANTOM, emb_channels=4, pixel_loss="l1", flips="hv"),
    "phantom-histo": dict(_AE_PHANTOM, emb_channels=4, pixel_loss="l1", flips="hv"),
}

_DIFF_PAPER: dict[str, Any] = dict(
    batch_size=32, epochs=PAPER_EPOCHS, checkpoint_every=100, image_every=1000, flips="",
    hid_chs=(256, 256, 512, 1024), time_emb_dim=1024,
)
_DIFF_PHANTOM: dict[str, Any] = dict(
    batch_size=32, steps=3000, checkpoint_every=500, image_every=500, flips="",
    hid_chs=(64, 64, 128, 128), time_emb_dim=256, sample_steps=50,
)
DIFFUSION_PRESETS: dict[str, dict[str, Any]] = {
    "chexpert": dict(_DIFF_PAPER),
    "airogs": dict(_DIFF_PAPER),
    "crcdx": dict(_DIFF_PAPER),
    "folder": dict(_DIFF_PAPER),
    "phantom-cxr": dict(_DIFF_PHANTOM),
    "phantom-fundus": dict(_DIFF_PHANTOM),
    "phantom-histo": dict(_DIFF_PHANTOM),
}


def preset(stage: str, dataset: str) -> dict[str, Any]:
    """The preset values of ``stage`` ('autoencoder' or 'diffusion') for ``dataset``."""
    table = {"autoencoder": AUTOENCODER_PRESETS, "diffusion": DIFFUSION_PRESETS}[stage]
    try:
        return dict(table[dataset])
    except KeyError:
        raise ValueError(f"--dataset {dataset!r} has no preset; choose one of {', '.join(table)}") from None
