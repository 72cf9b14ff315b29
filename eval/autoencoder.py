"""Reconstruction metrics of an autoencoder: MS-SSIM, SSIM, MSE (x 1e-5, as the paper) and LPIPS, mean +- std.

    python -m eval.autoencoder --checkpoint runs/ae-chexpert --dataset chexpert --data-dir ~/CheXpert-v1.0-small
    python -m eval.autoencoder --checkpoint runs/ae-phantom/checkpoints/2000 --image-size 192 --num-examples 64
    python -m eval.autoencoder --checkpoint last_vae.ckpt --dataset airogs --data-dir ~/airogs --split train
    python -m eval.autoencoder --checkpoint runs/autoencoder-phantom-brain --num-examples 8          # volumes

CKPT is an autoencoder training run (directory or ``RUN/checkpoints/<step>``), a diffusion run (its
frozen autoencoder), or an original Medfusion PyTorch checkpoint (``.ckpt``/``.pt``/``.pth`` of a
``VAE``, or of a ``VAEGAN``, whose inner VAE is used). For a run, ``--dataset``, ``--data-dir`` and
``--image-size`` default to the run's.

As the reference's ``scripts/evaluate_latent_embedder.py`` (spec 11.2): the reconstruction uses a
random posterior sample (image i's from ``fold_in(key(seed), i)``), clamped to [-1, 1]; MS-SSIM
(TorchMetrics 0.11, relu) and MSE on [0, 1]; LPIPS (calibrated AlexNet) on [-1, 1], of which the
reference logs 1 - LPIPS as "LPIPS score". MS-SSIM needs images of at least 176 pixels a side (left
out below that); single-scale SSIM (TorchMetrics 0.11, not in the reference's script) is reported
besides, as it also measures smaller images. Writes OUT/autoencoder_metrics.json (summary and per-image
values) and OUT/reconstructions.png (the first 8 originals above their reconstructions); OUT defaults to
runs/eval-autoencoder-<dataset>.

A 3-D autoencoder is evaluated on the volumes of a 3-D data set (phantom-brain, volume-folder) the same
way: 3-D SSIM and MS-SSIM (MS-SSIM needs 176^3 volumes), MSE over the voxels; LPIPS, a 2-D network, is
left out with a note; the picture shows each volume by its three orthogonal mid-slices.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from medfusion_jax import command
from medfusion_jax.command import CommandError
from medfusion_jax.convert.autoencoder import load_autoencoder
from medfusion_jax.data import get_info
from medfusion_jax.evaluation.dataset_images import DatasetImages
from medfusion_jax.evaluation.reconstruction import (
    evaluate_reconstruction,
    vae_reconstructor,
)

SPLIT_ALIASES = {"val": "validation", "valid": "validation"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval.autoencoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run directory, RUN/checkpoints/<step>, or .ckpt/.pt/.pth")
    p.add_argument("--dataset", help="data set name (python -m medfusion_jax.data list); default: the run's")
    p.add_argument("--data-dir", help="the data set's folder (default: the run's, for its data set)")
    p.add_argument("--split", help="split (default: validation where the data set has one, else train)")
    p.add_argument("--image-size", type=int, help="image size (default: the run's, else the data set's)")
    p.add_argument("--num-examples", type=int, help="evaluate the first N images (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
    p.add_argument("--out", type=Path, help="output folder (default: runs/eval-autoencoder-<dataset>)")
    p.add_argument("--no-lpips", action="store_true", help="leave LPIPS out")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.batch_size < 1 or (args.num_examples is not None and args.num_examples < 1):
        p.error("--batch-size and --num-examples must be positive")
    return args


def format_table(summary: dict) -> str:
    rows = [("MS-SSIM", "ms_ssim", 4), ("SSIM", "ssim", 4), ("MSE (x1e-5)", "mse_x1e5", 2), ("LPIPS", "lpips", 4),
            ("LPIPS score (1 - LPIPS)", "lpips_score", 4)]
    lines = [f"{'metric':<24} {'mean':>10}   {'std':>8}"]
    for label, key, digits in rows:
        value = summary[key]
        if value is None:
            lines.append(f"{label:<24} {'-':>10}")
        else:
            lines.append(f"{label:<24} {value['mean']:>10.{digits}f} +- {value['std']:>8.{digits}f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    return command.run(lambda: _main(parse_args(argv)), prog="eval.autoencoder")


def _main(args) -> int:
    vae, ckpt = load_autoencoder(args.checkpoint)

    run_dataset = ckpt.get("dataset")
    dataset = args.dataset or run_dataset
    if dataset is None:
        raise CommandError(f"--dataset is needed for {args.checkpoint} (an original checkpoint names no data set)")
    same_data = dataset == run_dataset
    data_dir = args.data_dir if args.data_dir is not None else (ckpt.get("data_dir") if same_data else None)
    image_size = args.image_size or (ckpt.get("image_size") if same_data else None)
    info = get_info(dataset)
    if info.spatial_dims != vae.spatial_dims:
        kinds = {2: "images", 3: "volumes"}
        raise CommandError(f"{args.checkpoint} is an autoencoder of {kinds[vae.spatial_dims]}, but {dataset} holds "
                           f"{kinds[info.spatial_dims]}")
    split = SPLIT_ALIASES.get(args.split, args.split) if args.split else (
        "validation" if "validation" in info.splits else "train")
    # The autoencoder's input channels (3 for the reference's RGB images; a volume data set's own, 1 for
    # phantom-brain): the data set repeats a grayscale channel to match.
    images = DatasetImages(dataset, data_dir=data_dir, split=split, image_size=image_size,
                           channels=vae.in_channels, num_examples=args.num_examples,
                           limit=args.num_examples)
    size = images.source.image_size
    if size % vae.downsampling:
        raise ValueError(f"--image-size {size} is not divisible by the autoencoder's downsampling "
                         f"{vae.downsampling}")
    out = args.out or Path("runs") / f"eval-autoencoder-{dataset}"
    unit = "volume" if vae.spatial_dims == 3 else "img"
    with tqdm(total=len(images), desc="reconstructing", unit=unit, disable=args.no_progress) as bar:
        result = evaluate_reconstruction(iter(images), vae_reconstructor(vae), batch_size=args.batch_size,
                                         seed=args.seed, with_lpips=not args.no_lpips, on_batch=bar.update)

    summary = result.summary()
    if images.skipped:
        summary["notes"].append(images.skipped_note())
    out.mkdir(parents=True, exist_ok=True)
    per_image = {k: (None if v is None else [float(x) for x in v])
                 for k, v in (("ms_ssim", result.ms_ssim), ("ssim", result.ssim), ("mse", result.mse),
                              ("lpips", result.lpips))}
    payload = dict(checkpoint=ckpt, dataset=dataset, data_dir=data_dir, split=split, image_size=size,
                   channels=vae.in_channels, num_examples=args.num_examples, batch_size=args.batch_size,
                   seed=args.seed, metrics=summary, per_image=per_image)
    (out / "autoencoder_metrics.json").write_text(json.dumps(payload, indent=1) + "\n")
    grid = result.comparison_grid()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(out / "reconstructions.png")

    kind = "volumes" if result.volumes else "images"
    print(f"{args.checkpoint} on {dataset}:{split}, {result.num_images} {kind} of "
          f"{'x'.join(str(s) for s in result.image_shape[:-1])}")
    print(format_table(summary))
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"wrote {out / 'autoencoder_metrics.json'} and {out / 'reconstructions.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
