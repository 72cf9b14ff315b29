"""``python -m medfusion_jax.convert verify GOLDEN_DIR [GOLDEN_DIR ...]``.

Prints one line per compared output with its error max|diff| / max(1, max|ref|) and exits non-zero when
any exceeds its tolerance (1e-4 for network outputs, 1e-5 for schedule constants).
"""

from __future__ import annotations

import argparse
import sys

from medfusion_jax.convert.verify import verify_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medfusion_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="compare with reference golden folders")
    verify.add_argument("folders", nargs="+", metavar="GOLDEN_DIR")
    verify.add_argument("--show-skipped", action="store_true", help="list recorded arrays that were not compared")
    args = parser.parse_args(argv)

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
        print(f"   {len(results) - len(bad)}/{len(results)} within tolerance; {len(skipped)} recorded arrays not compared")
        if args.show_skipped and skipped:
            print("   not compared: " + ", ".join(skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
