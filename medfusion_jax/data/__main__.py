"""Command line of the data layer.

``python -m medfusion_jax.data describe --dataset NAME [--data-dir DIR] [--split S] [--sample N | --all]``
prints :func:`medfusion_jax.data.describe.describe` as JSON; the exit status is 0 when no problem
of severity ``error`` was found, 1 otherwise.

``python -m medfusion_jax.data list`` prints the registry (names, classes, sizes) as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from medfusion_jax import command
from medfusion_jax.data.describe import DEFAULT_SAMPLE, describe
from medfusion_jax.data.registry import DATASETS


def _registry() -> list[dict]:
    return [
        {
            "name": info.name,
            "description": info.description,
            "modality": info.modality,
            "class_names": list(info.class_names),
            "image_size": info.image_size,
            "channels": info.channels,
            "splits": list(info.splits),
            "builtin": info.builtin,
            "feature": info.feature,
            "threshold": info.threshold,
        }
        for info in DATASETS.values()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medfusion_jax.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    d = commands.add_parser("describe", help="count images per class and list every problem, as JSON")
    d.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    d.add_argument("--data-dir", default=None, help="the data set's folder (not needed for phantoms)")
    d.add_argument("--split", default="train")
    d.add_argument("--image-size", type=int, default=None)
    group = d.add_mutually_exclusive_group()
    group.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                       help="images to decode and check (default %(default)s)")
    group.add_argument("--all", action="store_true", help="decode and check every image")
    commands.add_parser("list", help="print the registry as JSON")
    args = parser.parse_args(argv)
    return command.run(lambda: _run(args), prog="medfusion_jax.data")


def _run(args: argparse.Namespace) -> int:
    if args.command == "list":
        print(json.dumps(_registry(), indent=2))
        return 0
    report = describe(
        args.dataset,
        args.data_dir,
        split=args.split,
        image_size=args.image_size,
        sample=None if args.all else args.sample,
    )
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
