"""Smoke test of the whole chain (`make demo` at a tiny size): every artefact exists, every number is finite."""

import json
import math

import pytest

from eval import demo


@pytest.mark.slow
def test_tiny_demo_writes_every_artefact(tmp_path):
    out = tmp_path / "demo"
    assert demo.main(["--tiny", "--out", str(out)]) == 0

    for path in ["autoencoder/config.json", "autoencoder/loss_curve.png", "diffusion/config.json",
                 "diffusion/loss_curve.png", "scores/real_test_features.npz", "scores/fid_autoencoder_floor.json", "scores/conditioning.json",
                 "scores/autoencoder/autoencoder_metrics.json", "scores/autoencoder/reconstructions.png",
                 "scores/memorization/report.json", "scores/memorization/closest_pairs.png",
                 "report/fid_curve.png", "report.md", "report.html", "timings.json"]:
        assert (out / path).is_file(), path
    steps = sorted(p.name for p in (out / "samples").iterdir())
    assert len(steps) == 2  # --tiny: two FID points
    for step in steps:
        classes = sorted(p.name for p in (out / "samples" / step).iterdir() if p.is_dir())
        assert classes == ["cardiomegaly", "no cardiomegaly"]
        assert all(len(list((out / "samples" / step / c).glob("*.png"))) == 4 for c in classes)

    def numbers(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                yield from numbers(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from numbers(v)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            yield obj

    fids = [json.loads((out / "scores" / f"fid_{s}.json").read_text())["results"]
            for s in [*steps, "autoencoder_floor"]]
    assert all(math.isfinite(row["fid"]) and row["fid"] >= 0 for rows in fids for row in rows)
    assert {"precision", "recall"} <= set(fids[-2][0])
    for name in ["autoencoder/autoencoder_metrics.json", "memorization/report.json"]:
        values = list(numbers(json.loads((out / "scores" / name).read_text())))
        assert values and all(math.isfinite(v) for v in values), name
    accuracy = json.loads((out / "scores" / "conditioning.json").read_text())
    assert 0.0 <= accuracy["generated"]["balanced_accuracy"] <= 1.0
    report = (out / "report.md").read_text()
    for section in ["## Scores", "## FID over diffusion training", "## Conditioning accuracy",
                    "## Samples per class", "## Autoencoder reconstructions", "## Memorisation audit"]:
        assert section in report
    scores_table = report.split("## FID over")[0]
    for row in ["FID (all classes)", "precision", "recall", "autoencoder MSE", "autoencoder LPIPS"]:
        line = next(l for l in scores_table.splitlines() if l.startswith(f"| {row}"))
        assert math.isfinite(float(line.split("|")[2])), line
    assert "autoencoder MS-SSIM | n/a" in scores_table  # 32x32 images: too small for 5-scale MS-SSIM

    # Run again: everything is kept, nothing is retrained or resampled.
    before = {p: p.stat().st_mtime_ns for p in (out / "samples").rglob("*.png")}
    assert demo.main(["--tiny", "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "samples").rglob("*.png")} == before
