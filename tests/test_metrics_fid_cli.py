"""``python -m eval.fid``: folders with classes, saved statistics, per-class rows, JSON, and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from eval import fid as cli
from medfusion_jax.evaluation.feature_sets import load_feature_set
from medfusion_jax.metrics.fid import fid_from_features


def _write_folder(root, seed: int, classes=("cat_a", "cat_b"), per_class: int = 5, size: int = 40):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = rng.integers(0, 256, size=3) * (c + 1) % 256
            img = np.clip(base + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
            if i == 0:
                # One grayscale file: read as 3 channels like PIL .convert('RGB').
                Image.fromarray(img[..., 0]).save(root / name / f"{i}.png")
            else:
                Image.fromarray(img).save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_cli")
    _write_folder(root / "real", 0)
    _write_folder(root / "fake", 1)
    return root


def test_folders_per_class_json_and_saved_stats(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDFUSION_JAX_CACHE", str(tmp_path / "cache"))
    stats, out = tmp_path / "real.npz", tmp_path / "fid.json"
    argv = ["--real", str(folders / "real"), "--fake", str(folders / "fake"), "--per-class", "--json", str(out),
            "--save-stats", str(stats), "--batch-size", "5", "--no-progress"]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["subset", "n_real", "n_fake", "fid", "kid_mean", "kid_std",
                                             "precision", "recall"]
    result = json.loads(out.read_text())
    rows = {r["subset"]: r for r in result["results"]}
    assert set(rows) == {"all", "cat_a", "cat_b"}
    assert rows["all"]["n_real"] == rows["all"]["n_fake"] == 10
    assert 0 <= rows["all"]["precision"] <= 1 and 0 <= rows["all"]["recall"] <= 1
    assert rows["cat_a"]["n_real"] == 5 and rows["cat_a"]["fid"] > 0
    # KID over subsets of min(1000, 10 // 2, 10 // 2) = 5 images: different subsets, so a spread.
    assert rows["all"]["kid_subset_size"] == 5 and rows["all"]["kid_std"] > 0
    assert np.isfinite(rows["all"]["kid_mean"]) and rows["cat_a"]["kid_subset_size"] == 2

    real = load_feature_set(stats)
    assert real.features.shape == (10, 2048) and real.classes == ["cat_a", "cat_b"]

    # The saved real side gives the same numbers without re-reading the real images.
    again = tmp_path / "again.json"
    assert cli.main(["--real", str(stats), "--fake", str(folders / "fake"), "--json", str(again),
                     "--batch-size", "5", "--no-progress"]) == 0
    row = json.loads(again.read_text())["results"][0]
    assert row["fid"] == pytest.approx(rows["all"]["fid"], rel=1e-9)
    assert (row["precision"], row["recall"]) == (rows["all"]["precision"], rows["all"]["recall"])
    assert row["kid_mean"] == pytest.approx(rows["all"]["kid_mean"], rel=1e-9)

    # And the fake side with itself: FID 0, precision = recall = 1.
    assert cli.main(["--real", str(stats), "--fake", str(stats), "--json", str(again), "--no-progress"]) == 0
    row = json.loads(again.read_text())["results"][0]
    assert abs(row["fid"]) < 1e-6 and (row["precision"], row["recall"]) == (1.0, 1.0)
    assert fid_from_features(real.features, real.features) == pytest.approx(0.0, abs=1e-6)


def test_errors(folders, tmp_path, capsys):
    assert cli.main(["--real", str(tmp_path / "nope"), "--fake", str(folders / "fake")]) == 2
    assert "neither an image folder, a statistics file, nor a dataset name" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["--real", str(tmp_path / "empty"), "--fake", str(folders / "fake")]) == 2
    assert "no images in" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    assert cli.main(["--real", str(bad), "--fake", str(folders / "fake"), "--no-progress"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    np.savez(tmp_path / "mu_sigma.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    assert cli.main(["--real", str(tmp_path / "mu_sigma.npz"), "--fake", str(tmp_path / "mu_sigma.npz"),
                     "--per-class", "--no-progress"]) == 2
    assert "--per-class needs per-sample features" in capsys.readouterr().err


def test_dataset_name_side_equals_the_same_images_as_a_folder(tmp_path, monkeypatch, capsys):
    """A dataset name (here a built-in phantom) gives the features of its images, labelled by class."""
    from medfusion_jax.data import make_dataset

    monkeypatch.setenv("MEDFUSION_JAX_CACHE", str(tmp_path / "cache"))
    source = make_dataset("phantom-cxr", split="test", num_examples=6)
    for i in range(len(source)):
        item = source[i]
        folder = tmp_path / "exported" / source.class_names[item["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(item["image"]).save(folder / f"{i}.png")
    out = tmp_path / "fid.json"
    args = ["--real", "phantom-cxr", "--split", "test", "--num-examples", "6", "--fake", str(tmp_path / "exported"),
            "--per-class", "--no-pr", "--no-progress", "--json", str(out)]
    assert cli.main(args) == 0
    rows = {row["subset"]: row for row in json.loads(out.read_text())["results"]}
    assert rows["all"]["n_real"] == rows["all"]["n_fake"] == 6
    assert abs(rows["all"]["fid"]) < 1e-3
    assert set(rows) - {"all"} <= set(source.class_names)
    assert cli.main(["--real", "no-such-dataset", "--fake", str(tmp_path / "exported")]) == 2
    assert "nor a dataset name" in capsys.readouterr().err


def test_volumes_are_scored_on_their_orthogonal_mid_slices_pooled_and_per_plane(tmp_path, monkeypatch, capsys):
    """A 3-D data set's side, its volumes written as NIfTI, and their mid-slices cut by hand (the
    definition: the centre index of each axis, superior up) and saved as PNG all give the same features."""
    from medfusion_jax.data import make_dataset
    from medfusion_jax.images import write_nifti_atomic

    monkeypatch.setenv("MEDFUSION_JAX_CACHE", str(tmp_path / "cache"))
    # 40^3 and batches of 5: the compiled Inception of the other tests of this file (40 x 40 images) is reused.
    source = make_dataset("phantom-brain", split="test", image_size=40, channels=1, num_examples=4)
    for i in range(len(source)):
        item = source[i]
        name = source.class_names[item["label"]]
        v = item["image"]  # [D, H, W, 1]
        (tmp_path / "nifti" / name).mkdir(parents=True, exist_ok=True)
        write_nifti_atomic(tmp_path / "nifti" / name / f"{i}.nii.gz", v)
        (tmp_path / "png" / name).mkdir(parents=True, exist_ok=True)
        d, h, w = (n // 2 for n in v.shape[:3])
        for plane, cut in (("a", v[d]), ("c", v[::-1, h]), ("s", v[::-1, :, w])):
            Image.fromarray(cut[..., 0]).save(tmp_path / "png" / name / f"{i}{plane}.png")
    out = tmp_path / "fid.json"
    common = ["--no-pr", "--no-kid", "--no-progress", "--json", str(out), "--batch-size", "5"]
    assert cli.main(["--real", "phantom-brain", "--split", "test", "--image-size", "40", "--num-examples", "4",
                     "--fake", str(tmp_path / "nifti"), *common]) == 0
    rows = {row["subset"]: row for row in json.loads(out.read_text())["results"]}
    assert set(rows) == {"all", "all [axial]", "all [coronal]", "all [sagittal]"}
    assert rows["all"]["n_real"] == rows["all"]["n_fake"] == 12 and rows["all [axial]"]["n_fake"] == 4
    assert abs(rows["all"]["fid"]) < 1e-3 and abs(rows["all [sagittal]"]["fid"]) < 1e-3
    assert cli.main(["--real", str(tmp_path / "png"), "--fake", str(tmp_path / "nifti"), *common]) == 0
    assert abs(json.loads(out.read_text())["results"][0]["fid"]) < 1e-3
    capsys.readouterr()
