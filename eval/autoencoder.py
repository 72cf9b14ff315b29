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
import sys
from pathlib import Path

from medfusion_jax import command
from medfusion_jax.workflows.autoencoder_quality import evaluate_autoencoder


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
    quality = evaluate_autoencoder(args.checkpoint, dataset=args.dataset, data_dir=args.data_dir, split=args.split,
                                   image_size=args.image_size, num_examples=args.num_examples,
                                   batch_size=args.batch_size, seed=args.seed, with_lpips=not args.no_lpips,
                                   out=args.out, progress=not args.no_progress)
    result, summary, out = quality.result, quality.payload["metrics"], quality.out
    kind = "volumes" if result.volumes else "images"
    print(f"{args.checkpoint} on {quality.dataset}:{quality.split}, {result.num_images} {kind} of "
          f"{'x'.join(str(s) for s in result.image_shape[:-1])}")
    print(format_table(summary))
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"wrote {out / 'autoencoder_metrics.json'} and {out / 'reconstructions.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
