"""`make demo DATASET=phantom-brain` at a tiny size (issue 15 items 5-6): the whole chain on volumes.

A file of its own, so that the test runner's two workers run it beside the 2-D tiny demo."""

import json
import os

import pytest

from eval import demo
from medfusion_jax.evaluation.image_scores import ImageScores

# --tiny sizes (6 volumes per class, 12 real: 36 slices a side) and one checkpoint, to keep the suite's time.
ARGS = ["--tiny", "--fid-points", "1"]


def _rows(path):
    return [ImageScores.from_dict(r) for r in json.loads(path.read_text())["rows"]]


@pytest.mark.skipif("MEDFUSION_TEST_VOLUME_DEMO" not in os.environ,
                    reason="MEDFUSION_TEST_VOLUME_DEMO=1 runs it (~1.5 min; out of CI for the 15-minute budget)")
@pytest.mark.slow
def test_tiny_volume_demo_scores_slices_per_plane_and_reports_them(tmp_path, capsys):
    """Issue 15 items 5-6: the same chain on the 3-D phantom: NIfTI samples, every set scored on the three
    orthogonal mid-slices (pooled and per plane), 3-D reconstruction metrics, the memorisation audit of
    volumes, and the report with the per-plane table."""
    out = tmp_path / "brain"
    assert demo.main(["--dataset", "phantom-brain", *ARGS, "--out", str(out)]) == 0
    steps = sorted(p.name for p in (out / "samples").iterdir())
    assert len(steps) == 1
    for step in steps:
        for c in ("normal ventricles", "ventriculomegaly"):
            assert len(list((out / "samples" / step / c).glob("*.nii.gz"))) == 6, (step, c)
        scores = json.loads((out / "scores" / f"{step}.json").read_text())
        assert set(scores["planes"]) == {"axial", "coronal", "sagittal"}
        pooled = ImageScores.from_dict(scores["rows"][0])
        assert pooled.n_fake == 36 and pooled.n_real == 36 and pooled.finite()  # 3 slices per volume
        for rows in scores["planes"].values():
            row = ImageScores.from_dict(rows[0])
            assert row.n_fake == 12 and row.n_real == 12 and row.finite() and row.precision is not None
    real_vs_real = _rows(out / "scores" / "reference_real.json")[0]
    assert real_vs_real.precision > 0.5 and real_vs_real.recall > 0.5, real_vs_real
    metrics = json.loads((out / "scores" / "autoencoder" / "autoencoder_metrics.json").read_text())["metrics"]
    assert 0 < metrics["ssim"]["mean"] <= 1 and metrics["lpips"] is None
    assert any("LPIPS left out" in note for note in metrics["notes"])
    memo = json.loads((out / "scores" / "memorization" / "report.json").read_text())
    assert memo["n_generated"] == 12 and memo["matches"][0]["train"].endswith(".nii.gz")
    measured = json.loads((out / "scores" / "measurements.json").read_text())
    assert [m["class_name"] for m in measured["real"]] == ["normal ventricles", "ventriculomegaly"]
    # The demo's 3-D autoencoder on a data set of images is refused, naming both.
    from eval import autoencoder as ae_eval

    assert ae_eval.main(["--checkpoint", str(out / "autoencoder"), "--dataset", "phantom-cxr", "--num-examples", "2",
                         "--out", str(tmp_path / "x")]) == 2
    assert "an autoencoder of volumes, but phantom-cxr holds images" in capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert "32^3 volumes" in report and "| axial | generated |" in report and "| sagittal | real vs real |" in report
