"""Reconstruction quality of a trained autoencoder on a data set: the library side of
``python -m eval.autoencoder`` and of the demo's autoencoder stage (the metrics: that command's help)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from medfusion_jax.command import CommandError
from medfusion_jax.convert.autoencoder import load_autoencoder
from medfusion_jax.data import get_info
from medfusion_jax.evaluation.dataset_images import DatasetImages
from medfusion_jax.evaluation.reconstruction import ReconstructionResult, evaluate_reconstruction, vae_reconstructor

SPLIT_ALIASES = {"val": "validation", "valid": "validation"}


@dataclasses.dataclass(frozen=True)
class AutoencoderQuality:
    """What :func:`evaluate_autoencoder` measured and where it wrote it."""

    result: ReconstructionResult
    #: The content of ``autoencoder_metrics.json``: settings, summary (mean +- std) and per-image values.
    payload: dict
    out: Path
    checkpoint: str
    dataset: str
    split: str


def evaluate_autoencoder(checkpoint: str, *, dataset: str | None = None, data_dir: str | None = None,
                         split: str | None = None, image_size: int | None = None, num_examples: int | None = None,
                         batch_size: int = 16, seed: int = 0, with_lpips: bool = True, out: Path | None = None,
                         progress: bool = True) -> AutoencoderQuality:
    """Reconstruction metrics of the autoencoder at ``checkpoint`` on a split of a data set (by default the
    run's own data set, folder and size; split: validation where there is one, else train), written to
    ``out/autoencoder_metrics.json`` and ``out/reconstructions.png`` (``out`` default:
    ``runs/eval-autoencoder-<dataset>``). See ``python -m eval.autoencoder --help`` for the metrics."""
    vae, ckpt = load_autoencoder(checkpoint)

    run_dataset = ckpt.get("dataset")
    dataset = dataset or run_dataset
    if dataset is None:
        raise CommandError(f"--dataset is needed for {checkpoint} (an original checkpoint names no data set)")
    same_data = dataset == run_dataset
    data_dir = data_dir if data_dir is not None else (ckpt.get("data_dir") if same_data else None)
    image_size = image_size or (ckpt.get("image_size") if same_data else None)
    info = get_info(dataset)
    if info.spatial_dims != vae.spatial_dims:
        kinds = {2: "images", 3: "volumes"}
        raise CommandError(f"{checkpoint} is an autoencoder of {kinds[vae.spatial_dims]}, but {dataset} holds "
                           f"{kinds[info.spatial_dims]}")
    split = SPLIT_ALIASES.get(split, split) if split else (
        "validation" if "validation" in info.splits else "train")
    # The autoencoder's input channels (3 for the reference's RGB images; a volume data set's own, 1 for
    # phantom-brain): the data set repeats a grayscale channel to match.
    images = DatasetImages(dataset, data_dir=data_dir, split=split, image_size=image_size,
                           channels=vae.in_channels, num_examples=num_examples,
                           limit=num_examples)
    size = images.source.image_size
    if size % vae.downsampling:
        raise ValueError(f"--image-size {size} is not divisible by the autoencoder's downsampling "
                         f"{vae.downsampling}")
    out = out or Path("runs") / f"eval-autoencoder-{dataset}"
    unit = "volume" if vae.spatial_dims == 3 else "img"
    with tqdm(total=len(images), desc="reconstructing", unit=unit, disable=not progress) as bar:
        result = evaluate_reconstruction(iter(images), vae_reconstructor(vae), batch_size=batch_size,
                                         seed=seed, with_lpips=with_lpips, on_batch=bar.update)

    summary = result.summary()
    if images.skipped:
        summary["notes"].append(images.skipped_note())
    out.mkdir(parents=True, exist_ok=True)
    per_image = {k: (None if v is None else [float(x) for x in v])
                 for k, v in (("ms_ssim", result.ms_ssim), ("ssim", result.ssim), ("mse", result.mse),
                              ("lpips", result.lpips))}
    payload = dict(checkpoint=ckpt, dataset=dataset, data_dir=data_dir, split=split, image_size=size,
                   channels=vae.in_channels, num_examples=num_examples, batch_size=batch_size,
                   seed=seed, metrics=summary, per_image=per_image)
    (out / "autoencoder_metrics.json").write_text(json.dumps(payload, indent=1) + "\n")
    grid = result.comparison_grid()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(out / "reconstructions.png")

    return AutoencoderQuality(result=result, payload=payload, out=out, checkpoint=str(checkpoint), dataset=dataset,
                              split=split)
