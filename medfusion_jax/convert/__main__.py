"""Command line of :mod:`medfusion_jax.convert`.

``python -m medfusion_jax.convert verify GOLDEN_DIR [GOLDEN_DIR ...]``: prints one line per compared output
with its error max|diff| / max(1, max|ref|) and exits non-zero when any exceeds its tolerance (1e-4 for
network outputs, 1e-5 for schedule constants).

``python -m medfusion_jax.convert medfusion --autoencoder VAE.ckpt [--diffusion PIPELINE.ckpt] --out DIR
[--dataset NAME] [--class-names a,b] [--image-size N] [--overwrite]``: converts the original Medfusion
PyTorch-Lightning checkpoints into a run directory that ``load_trained`` and ``python -m eval.sample
--checkpoint DIR`` read (see :mod:`medfusion_jax.convert.medfusion`). Exits 2 with a one-line error
when a checkpoint cannot be converted.
"""

from __future__ import annotations

import argparse
import sys

from medfusion_jax import command
from medfusion_jax.convert.verify import verify_folder


def _verify(args) -> int:
    failed = 0
    for folder in args.folders:
        print(f"== {folder}")
        try:
            results, skipped = verify_folder(folder)
        except (OSError, ValueError) as err:
            print(f"ERROR {err}")
            failed += 1
            continue
        for result in results:
            print(result.line())
        bad = [r for r in results if not r.ok]
        failed += bool(bad)
        print(f"   {len(results) - len(bad)}/{len(results)} within tolerance; "
              f"{len(skipped)} recorded arrays not compared")
        if args.show_skipped and skipped:
            print("   not compared: " + ", ".join(skipped))
    return 1 if failed else 0


def _medfusion(args) -> int:
    from medfusion_jax.convert.medfusion import convert_medfusion

    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    # ConversionError, StateDictMismatch, TorchFileError and missing files are one-line errors (exit 2).
    out = convert_medfusion(args.autoencoder, args.out, diffusion=args.diffusion, dataset=args.dataset,
                            class_names=names, image_size=args.image_size, overwrite=args.overwrite)
    kind = "diffusion" if args.diffusion else "autoencoder"
    print(f"wrote the {kind} run {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medfusion_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="compare with reference golden folders")
    verify.add_argument("folders", nargs="+", metavar="GOLDEN_DIR")
    verify.add_argument("--show-skipped", action="store_true", help="list recorded arrays that were not compared")
    med = sub.add_parser("medfusion", help="convert original Medfusion Lightning checkpoints into a run directory")
    med.add_argument("--autoencoder", required=True, metavar="VAE.ckpt",
                     help="the reference VAE or VAEGAN Lightning checkpoint")
    med.add_argument("--diffusion", metavar="PIPELINE.ckpt", help="the reference DiffusionPipeline checkpoint")
    med.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    med.add_argument("--dataset", help="data set of medfusion_jax.data.DATASETS (class names, image size)")
    med.add_argument("--class-names", help="comma-separated class names in label order (overrides --dataset's)")
    med.add_argument("--image-size", type=int, help="image size the models work at (default: the data set's, "
                                                     "else 256)")
    med.add_argument("--overwrite", action="store_true", help="replace the run files of a non-empty --out")
    args = parser.parse_args(argv)
    return command.run(lambda: _verify(args) if args.command == "verify" else _medfusion(args),
                       prog="medfusion_jax.convert")


if __name__ == "__main__":
    sys.exit(main())
