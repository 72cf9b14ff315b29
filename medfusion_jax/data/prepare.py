"""``python -m medfusion_jax.data.prepare``: write a user's copy of a paper data set as array_record.

Usage::

    python -m medfusion_jax.data.prepare --dataset airogs --data-dir ~/AIROGS --out ~/prepared \\
        [--image-size 256] [--encoding raw|png|jpeg] [--workers 4] [--strict]

Runs :func:`medfusion_jax.data.preparation.prepare` with a progress bar per split, then prints a
JSON summary (output folder, images per class and split, skipped files). Afterwards pass ``--out``
as the data dir: ``make_dataset("airogs", "~/prepared")`` finds the prepared copy and reads its
array_record files through Grain (no decoding of JPEGs during training; format:
:mod:`medfusion_jax.data.prepared`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from medfusion_jax.data.errors import DataError, require_dir


def main(argv: list[str] | None = None) -> int:
    from medfusion_jax.data import preparation, prepared

    parser = argparse.ArgumentParser(prog="python -m medfusion_jax.data.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(preparation.PREPARABLE))
    parser.add_argument("--data-dir", required=True, help="your copy of the data set, in its published layout")
    parser.add_argument("--out", required=True, help="where the prepared data is written")
    parser.add_argument("--image-size", type=int, default=None, help="side length (default: the registry's)")
    parser.add_argument("--encoding", choices=prepared.ENCODINGS, default="raw")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="decoding processes (default: all cores)")
    parser.add_argument("--strict", action="store_true", help="stop at the first problem instead of skipping")
    args = parser.parse_args(argv)
    try:
        data_dir = require_dir(args.data_dir, args.dataset)
        # Keep stdout for the JSON summary.
        with contextlib.redirect_stdout(sys.stderr):
            path = preparation.prepare(
                args.dataset,
                data_dir,
                args.out,
                image_size=args.image_size,
                encoding=args.encoding,
                workers=args.workers,
                strict=args.strict,
            )
        metadata = prepared.read_metadata(path)
    except DataError as e:  # includes ImageError (--strict)
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = {
        "dataset": args.dataset,
        "prepared": path,
        "use_as_data_dir": os.path.abspath(args.out),
        "class_counts": metadata.get("class_counts", {}),
        "skipped": {split: v["count"] for split, v in metadata.get("skipped", {}).items()},
        "index_problems": {split: v["count"] for split, v in metadata.get("problems", {}).items()},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
