"""Time of every stage of ``make demo``, measured in one run, against its 25-minute budget.

    python bench/demo.py                                  # phantom-cxr, the demo's defaults
    python bench/demo.py --dataset phantom-fundus
    python bench/demo.py --out runs/bench-demo -- --tiny  # anything after -- goes to eval.demo

Runs ``python -m eval.demo`` in a subprocess (a fresh process, as ``make demo`` starts it) into a new
output folder (``--out``, default a temporary one that is deleted), then prints one JSON object: the
seconds of each stage (from the demo's ``timings.json``), the wall time of the whole command (process
start and imports included), the budget, the headroom, and the machine's load average before and after
(other processes share the cores and slow every stage alike). The headline scores of the run are
printed too, so a speed change that costs quality shows in the same record.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 25 * 60
REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="phantom-cxr")
    parser.add_argument("--out", type=Path, help="output folder (kept); default: a temporary folder (deleted)")
    parser.add_argument("demo_args", nargs="*", help="more eval.demo flags (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        out = args.out or Path(tmp) / "demo"
        if (out / "timings.json").exists():
            parser.error(f"--out {out} already holds a demo run; a benchmark needs a new folder")
        command = [sys.executable, "-m", "eval.demo", "--dataset", args.dataset, "--out", str(out), *args.demo_args]
        load_before = os.getloadavg()
        start = time.perf_counter()
        result = subprocess.run(command, cwd=REPO)
        wall = time.perf_counter() - start
        if result.returncode:
            print(f"eval.demo failed with exit status {result.returncode}", file=sys.stderr)
            return result.returncode
        stages = json.loads((out / "timings.json").read_text())
        record = {
            "dataset": args.dataset, "demo_args": args.demo_args,
            "stages_s": {k: round(v, 1) for k, v in stages.items()},
            "stages_total_s": round(sum(stages.values()), 1),
            "wall_s": round(wall, 1),
            "budget_s": BUDGET_S,
            "within_budget": wall <= BUDGET_S,
            "headroom": round(1 - wall / BUDGET_S, 3),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "scores": headline(out),
        }
    print(json.dumps(record, indent=1))
    return 0


def headline(out: Path) -> dict:
    """The last checkpoint's and the references' overall scores, and the conditioning numbers."""
    scores = out / "scores"
    result = {}
    steps = sorted(scores.glob("step_*.json"))
    for name, path in [("generated", steps[-1] if steps else None), ("real_vs_real", scores / "reference_real.json"),
                       ("reconstructions", scores / "reference_reconstructions.json")]:
        if path is not None and path.is_file():
            row = json.loads(path.read_text())["rows"][0]
            result[name] = {k: row[k] for k in ("fid", "kid_mean", "precision", "recall")}
    if (scores / "measurements.json").is_file():
        measured = json.loads((scores / "measurements.json").read_text())["generated"]
        result["conditioning"] = {m["class_name"]: {"accuracy": m["accuracy"],
                                                    "wasserstein1": m["distance"]["wasserstein1"]} for m in measured}
    return result


if __name__ == "__main__":
    sys.exit(main())
