"""The whole chain (`make demo` at a tiny size): every artefact and number is there and finite, the
references come from disjoint real splits of the stated sizes, and real-vs-real precision/recall is
well above 0 (it is 0 when the feature path or the metric is broken)."""

import json
import math

import numpy as np
import pytest

from eval import demo
from medfusion_jax.evaluation.feature_sets import load_feature_set
from medfusion_jax.evaluation.image_scores import ImageScores
from medfusion_jax.evaluation.measurements import ClassMeasurement

# --tiny with enough real images for precision/recall with k = 3 to mean something (still ~seconds of Inception).
ARGS = ["--tiny", "--num-per-class", "10", "--real-examples", "30", "--lr-decay", "0.5"]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert demo.main([*ARGS, "--out", str(out)]) == 0
    return out


def _rows(path):
    return [ImageScores.from_dict(r) for r in json.loads(path.read_text())["rows"]]


@pytest.mark.slow
def test_tiny_demo_writes_every_artefact_and_number(tiny_demo):
    out = tiny_demo
    for path in ["autoencoder/config.json", "autoencoder/loss_curve.png", "diffusion/config.json",
                 "scores/references.json", "scores/reference_real.json", "scores/reference_reconstructions.json",
                 "scores/measurements.json", "scores/autoencoder/autoencoder_metrics.json",
                 "scores/memorization/report.json", "scores/memorization/closest_pairs.png",
                 "report/scores_over_training.png", "report/measurement_histograms.png",
                 "diffusion/loss_curve.png", "report.md", "report.html",
                 "timings.json"]:
        assert (out / path).is_file(), path
    steps = sorted(p.name for p in (out / "samples").iterdir())
    assert len(steps) == 2  # --tiny: two checkpoints
    for step in steps:
        classes = sorted(p.name for p in (out / "samples" / step).iterdir() if p.is_dir())
        assert classes == ["cardiomegaly", "no cardiomegaly"]
        assert all(len(list((out / "samples" / step / c).glob("*.png"))) == 10 for c in classes)
        rows = _rows(out / "scores" / f"{step}.json")
        assert [r.subset for r in rows] == ["all", "cardiomegaly", "no cardiomegaly"]
        for row in rows:
            # Every number of every row: FID, KID mean and std, precision, recall.
            assert row.finite() and None not in (row.kid_mean, row.kid_std, row.precision, row.recall), row
            assert row.fid >= 0 and 0 <= row.precision <= 1 and 0 <= row.recall <= 1 and row.kid_std >= 0
        assert rows[0].n_fake == 20 and rows[0].n_real == 30 and rows[0].kid_subset_size == 10

    measured = json.loads((out / "scores" / "measurements.json").read_text())
    for name in ("generated", "real_reference", "real"):
        by_class = [ClassMeasurement.from_dict(r) for r in measured[name]]
        assert [m.class_name for m in by_class] == ["no cardiomegaly", "cardiomegaly"]
        for m in by_class:
            assert 0 <= m.accuracy <= 1
            # A 32-px image from a 4-step diffusion model may not be measurable; real ones always are.
            if name != "generated" or m.num_unmeasurable < m.num_images:
                assert math.isfinite(m.distance.wasserstein1) and 0 <= m.distance.ks_statistic <= 1
    real = [ClassMeasurement.from_dict(r) for r in measured["real"]]
    assert all(m.distance.wasserstein1 == 0.0 for m in real)  # the test set against itself

    report = (out / "report.md").read_text()
    for section in ["## Results", "## 1. Autoencoder", "## 2. Diffusion model over training",
                    "## 3. Samples per class", "## 4. Conditioning and the within-class distribution",
                    "## 5. Scores per class", "## 6. Memorisation audit", "## 7. Settings that differ from the paper",
                    "## 8. Time per stage"]:
        assert section in report, section
    for row in ["reference: real vs real", "reference: autoencoder reconstructions", "| image size | 256 | 32 |",
                # --lr-decay 0.5 of the 4 diffusion steps
                "| diffusion learning-rate schedule | constant | linear decay to 0 from step 2 to 4 |"]:
        assert row in report, row


@pytest.mark.slow
def test_references_are_disjoint_real_splits_of_the_stated_sizes(tiny_demo):
    out = tiny_demo
    refs = json.loads((out / "scores" / "references.json").read_text())
    assert refs["real"]["split"] == "test" and refs["real_reference"]["split"] == "validation"
    assert not refs["real_reference"]["overlaps_training"]
    assert refs["generated_per_checkpoint"] == refs["real_reference"]["n"] == refs["reconstructions"]["n"] == 20
    features = {name: load_feature_set(out / "scores" / "features" / f"{name}.npz")
                for name in ("real_test", "real_reference", "reconstructions")}
    assert features["real_test"].num == refs["real"]["n"] == 30
    assert features["real_reference"].num == features["reconstructions"].num == 20
    # Disjoint: no image of the reference split has the features of a test image.
    dist = np.linalg.norm(features["real_reference"].features[:, None] - features["real_test"].features[None], axis=-1)
    assert dist.min() > 1e-3
    assert refs["reconstructions"]["of"] == "real_reference"
    # Per class, as many reconstructions as reference images (the --tiny autoencoder's 3 steps make them
    # far from their originals, so closeness is not what this checks).
    assert sorted(features["reconstructions"].labels) == sorted(features["real_reference"].labels)
    real_vs_real = _rows(out / "scores" / "reference_real.json")[0]
    # Two samples of one distribution: precision and recall well above 0 (a broken feature path or metric
    # gives 0 here), KID near 0 next to its spread.
    assert real_vs_real.precision > 0.5 and real_vs_real.recall > 0.5, real_vs_real
    assert abs(real_vs_real.kid_mean) < 0.05


@pytest.mark.slow
def test_rerun_keeps_everything(tiny_demo):
    out = tiny_demo
    before = {p: p.stat().st_mtime_ns for p in (out / "samples").rglob("*.png")}
    scores_before = {p: p.read_text() for p in (out / "scores").glob("*.json")}
    assert demo.main([*ARGS, "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "samples").rglob("*.png")} == before
    assert {p: p.read_text() for p in (out / "scores").glob("*.json")} == scores_before



def _command_lines(args, ae_dir, diff_dir):
    """The command lines the demo ran before it called the library (kept here as the reference): the
    demo's configurations must be what these give, so its results do not move."""
    from medfusion_jax.data import get_info
    from medfusion_jax.training.presets import preset

    info = get_info(args.dataset)
    data = ["--dataset", args.dataset, "--image-size", str(args.image_size)] + (
        ["--data-dir", args.data_dir] if args.data_dir else [])
    train = data + (["--num-examples", str(args.train_examples)] if info.builtin else [])
    ae = train + ["--run-dir", str(ae_dir), "--steps", str(args.ae_steps), "--seed", str(args.seed),
                  "--checkpoint-every", str(max(1, args.ae_steps // 4)),
                  "--image-every", str(max(1, args.ae_steps // 4)), "--log-every", "10"]
    if args.paper_autoencoder:
        paper = preset("autoencoder", demo.PAPER_COUNTERPART.get(args.dataset, args.dataset))
        ae += ["--hid-chs", ",".join(map(str, paper["hid_chs"])), "--emb-channels", str(paper["emb_channels"]),
               "--lr", "1e-4", "--perceptual-weight", "1"]
    if args.ae_perceptual:
        ae += ["--perceptual-weight", "1"]
    if args.ae_emb_channels:
        ae += ["--emb-channels", str(args.ae_emb_channels)]
    if args.ae_lr:
        ae += ["--lr", str(args.ae_lr)]
    if args.ae_hid_chs:
        ae += ["--hid-chs", args.ae_hid_chs]
    if args.ae_lr_decay:
        ae += ["--lr-decay-start", str(args.ae_steps - round(args.ae_lr_decay * args.ae_steps)),
               "--lr-decay-end", str(args.ae_steps)]
    every = args.diffusion_steps // args.fid_points
    total = every * args.fid_points
    diff = train + ["--autoencoder", str(ae_dir), "--run-dir", str(diff_dir), "--cache-latents", "--steps", str(total),
                    "--seed", str(args.seed), "--batch-size", str(args.diffusion_batch_size), "--checkpoint-every",
                    str(every), "--keep-checkpoints", str(args.fid_points), "--image-every", str(every),
                    "--log-every", "10", "--sample-steps", str(args.sample_steps)]
    if args.unet_hid_chs:
        diff += ["--hid-chs", args.unet_hid_chs, "--time-emb-dim", "32", "--norm-groups", "8"]
    if args.unet_res_blocks:
        diff += ["--num-res-blocks", str(args.unet_res_blocks)]
    if args.lr_decay and round(args.lr_decay * total) >= 1:
        diff += ["--lr-decay-start", str(total - round(args.lr_decay * total)), "--lr-decay-end", str(total)]
    return ae, diff


@pytest.mark.parametrize("argv", [[], ARGS, ["--dataset", "phantom-fundus"],
                                  ["--dataset", "phantom-fundus", "--paper-autoencoder"],
                                  ["--dataset", "phantom-brain", "--tiny"],
                                  ["--ae-perceptual", "--ae-emb-channels", "8", "--ae-lr", "3e-4", "--ae-hid-chs",
                                   "16,32,32", "--unet-res-blocks", "1", "--lr-decay", "0.3", "--seed", "3",
                                   "--ae-lr-decay", "0.5"]])
def test_the_demo_trains_what_its_command_lines_would(argv, tmp_path):
    """The demo builds its configurations from the presets (no command line in between); they equal what
    `train.autoencoder` / `train.diffusion` make of the flags the demo used to pass them."""
    from train import autoencoder as ae_cli
    from train import diffusion as diff_cli

    args = demo.parse_args(argv)
    ae_dir, diff_dir = tmp_path / "autoencoder", tmp_path / "diffusion"
    ae_argv, diff_argv = _command_lines(args, ae_dir, diff_dir)
    assert demo.demo_autoencoder_config(args, ae_dir) == ae_cli.make_config(ae_cli.parse_args(ae_argv))
    assert demo.demo_diffusion_config(args, ae_dir, diff_dir) == diff_cli.make_config(diff_cli.parse_args(diff_argv))


@pytest.mark.parametrize("argv, decayed_steps", [([], 2880), (["--lr-decay", "0"], None),
                                                 (["--dataset", "phantom-brain"], None),
                                                 (["--dataset", "phantom-brain", "--lr-decay", "0.5"], 1650)])
def test_the_learning_rate_decays_over_the_last_40_percent_for_images_and_stays_constant_for_volumes(
        argv, decayed_steps, tmp_path):
    """Images: linear decay to 0 over the last 40 % of the diffusion steps (7200 -> from step 4320); volumes
    keep the constant rate their demo was measured with; `--lr-decay` sets either."""
    args = demo.parse_args(argv)
    config = demo.demo_diffusion_config(args, tmp_path / "autoencoder", tmp_path / "diffusion")
    total = config.run.steps
    if decayed_steps is None:
        assert (config.lr_decay_start, config.lr_decay_end) == (None, None)
    else:
        assert (config.lr_decay_start, config.lr_decay_end) == (total - decayed_steps, total)


@pytest.mark.parametrize("argv, steps, hid_chs, decay_start", [
    ([], 2000, (32, 64, 64), None),
    (["--dataset", "phantom-histo"], 2000, (32, 64, 64), None),
    (["--dataset", "phantom-fundus"], 6000, (32, 64, 128), 3000),
    (["--dataset", "phantom-fundus", "--ae-steps", "2000", "--ae-hid-chs", "32,64,64", "--ae-lr-decay", "0"],
     2000, (32, 64, 64), None),
    (["--dataset", "phantom-brain"], 800, (16, 32, 32), None)])
def test_the_autoencoder_trains_longer_and_wider_with_a_decayed_rate_on_phantom_fundus_only(
        argv, steps, hid_chs, decay_start, tmp_path):
    """phantom-fundus's autoencoder learns its RGB pixel noise late, so its demo trains 6000 steps with
    32,64,128 channels and the rate decayed over the last half; the other data sets keep their sizes, and the
    flags still set every one of the three."""
    config = demo.demo_autoencoder_config(demo.parse_args(argv), tmp_path / "autoencoder")
    assert config.run.steps == steps
    assert config.model.hid_chs == hid_chs
    assert config.lr_decay_start == decay_start
    assert config.lr_decay_end == (None if decay_start is None else steps)


def test_score_rows_show_precision_and_recall_with_three_decimals_and_na_when_not_computed():
    """Every score row of the report has the same number of decimals (0.5233 beside 0.73 did not compare), and a
    set scored from statistics alone (FID only: no precision/recall) reads n/a instead of failing the report."""
    from eval.demo_report import _score_cells

    full = ImageScores("all", n_real=500, n_fake=300, fid=31.96, kid_mean=0.0234, kid_std=0.002, precision=0.52333,
                       recall=0.3)
    assert _score_cells(full)[2:] == ["0.523", "0.300", "300 vs 500"]
    fid_only = ImageScores("all", n_real=500, n_fake=300, fid=31.96)
    assert _score_cells(fid_only)[1:4] == ["n/a", "n/a", "n/a"]
