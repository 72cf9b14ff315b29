"""Memorisation audit: cosine candidates, SSIM confirmation, the report, the picture, and the CLI; of images
and of volumes (NIfTI folders: features of the three mid-slices concatenated, 3-D SSIM)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from eval import memorization as cli
from medfusion_jax.evaluation.feature_sets import volume_slices
from medfusion_jax.evaluation.features import as_rgb_uint8
from medfusion_jax.evaluation.memorization import audit_folders
from medfusion_jax.images import write_nifti_atomic
from medfusion_jax.metrics.memorization import (
    MemorizationReport,
    audit,
    nearest_by_cosine,
    pairs_picture,
    pixel_ssim,
    resize_volume,
)


def test_nearest_by_cosine_hand_checked():
    train = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], np.float32)
    gen = np.array([[2, 0.1], [0, -3]], np.float32)
    sims, idx = nearest_by_cosine(gen, train, k=2)
    np.testing.assert_array_equal(idx, [[0, 2], [0, 3]])
    np.testing.assert_allclose(sims[0], [2 / np.hypot(2, 0.1), 2.1 / np.hypot(2, 0.1) / np.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(sims[1], [0, 0], atol=1e-7)


def test_blocks_and_large_k():
    rng = np.random.default_rng(0)
    train, gen = rng.normal(size=(50, 8)), rng.normal(size=(23, 8))
    s1, i1 = nearest_by_cosine(gen, train, k=3, block_size=5)
    s2, i2 = nearest_by_cosine(gen, train, k=3)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    assert nearest_by_cosine(gen, train[:2], k=5)[1].shape == (23, 2)


def _image(seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 128 + 90 * np.sin(xx / (3 + seed % 5) + seed) * np.cos(yy / (4 + seed % 3))
    img = base[..., None] + rng.normal(0, 10, size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_pixel_ssim():
    a, b = _image(1), _image(2)
    assert pixel_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert pixel_ssim(a, b) < 0.5
    # A training image of another size is resized to the generated one's.
    big = np.asarray(Image.fromarray(a).resize((96, 96), Image.BILINEAR))
    assert pixel_ssim(a, big) > 0.8


def test_audit_confirms_candidates_by_ssim():
    train_imgs = [_image(i) for i in range(6)]
    copy = np.clip(train_imgs[4].astype(np.int16) + 2, 0, 255).astype(np.uint8)
    gen_imgs = [copy, _image(100)]
    # Features that rank a wrong candidate first for the copy: SSIM must still find train image 4.
    train_f = np.eye(6, dtype=np.float32)
    gen_f = np.array([[0, 0, 0, 0, 0.9, 1.0], [1, 0.5, 0, 0, 0, 0]], np.float32)
    report = audit(gen_f, train_f, lambda g: gen_imgs[g], lambda j: train_imgs[j], k=2)
    assert report.train_index[0].tolist() == [5, 4]
    train_idx, _, sim = report.match_scores()
    assert train_idx[0] == 4 and sim[0] > 0.95
    assert sim[1] < 0.5
    np.testing.assert_array_equal(report.near_copies(0.9), [True, False])
    assert report.fraction_above(0.9) == 0.5
    assert report.fraction_above(0.9, cosine_threshold=0.999) == 0.0
    assert report.closest_pairs(1)[0][:2] == (0, 4)
    picture = pairs_picture(report.closest_pairs(2), lambda g: gen_imgs[g], lambda j: train_imgs[j], tile=32)
    assert picture.size == (2 * 32 + 12, 2 * (32 + 14 + 6))


def test_report_fraction_with_handmade_scores():
    report = MemorizationReport(
        train_index=np.array([[0, 1], [2, 3], [4, 5]]),
        cosine=np.array([[0.99, 0.98], [0.9, 0.8], [0.97, 0.5]]),
        ssim=np.array([[0.2, 0.95], [0.5, 0.4], [0.91, 0.1]]),
    )
    np.testing.assert_array_equal(report.match, [1, 0, 0])
    assert report.fraction_above(0.9) == pytest.approx(2 / 3)
    assert report.fraction_above(0.9, cosine_threshold=0.975) == pytest.approx(1 / 3)


def test_cli_writes_report_and_picture(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDFUSION_JAX_CACHE", str(tmp_path / "cache"))
    for i in range(6):
        (tmp_path / "train" / ("a" if i < 3 else "b")).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(i)).save(tmp_path / "train" / ("a" if i < 3 else "b") / f"{i}.png")
    (tmp_path / "gen").mkdir()
    Image.fromarray(_image(2)).save(tmp_path / "gen" / "copy.png")
    Image.fromarray(_image(77)).save(tmp_path / "gen" / "new.png")
    out = tmp_path / "out"
    argv = ["--train", str(tmp_path / "train"), "--generated", str(tmp_path / "gen"), "--out", str(out),
            "--batch-size", "4", "--k", "3", "--no-progress", "--train-features", str(tmp_path / "tf.npz")]
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_near_copies"] == 1 and report["fraction_near_copies"] == 0.5
    copy = next(m for m in report["matches"] if m["generated"].endswith("copy.png"))
    assert copy["train"].endswith("a/2.png") and copy["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert Image.open(out / "closest_pairs.png").size[0] > 0
    assert (tmp_path / "tf.npz").is_file()
    assert "1 of 2 generated images (50.00%)" in capsys.readouterr().out

    # The command is the library function's result: the same audit, from the cached training features.
    from medfusion_jax.evaluation.features import InceptionFeatureExtractor
    from medfusion_jax.evaluation.memorization import audit_folders

    extractor = InceptionFeatureExtractor(batch_size=4)
    result = audit_folders(tmp_path / "train", tmp_path / "gen", extractor=extractor, k=3,
                           train_features_cache=tmp_path / "tf.npz", progress=False)
    assert len(result.train_files) == 6 and len(result.generated_files) == 2
    assert result.summary(0.9, None) == report
    with pytest.raises(ValueError, match="does not hold features of the 2 images"):
        audit_folders(tmp_path / "gen", tmp_path / "gen", extractor=extractor, train_features_cache=tmp_path / "tf.npz",
                      progress=False)


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["--train", str(tmp_path / "missing"), "--generated", str(tmp_path)]) == 2
    assert "image folder not found" in capsys.readouterr().err
    assert cli.main(["--train", str(tmp_path / "empty"), "--generated", str(tmp_path)]) == 2
    assert "no images in" in capsys.readouterr().err


# -- volumes ---------------------------------------------------------------------------------------------


def _volume(seed: int, shape: tuple[int, int, int] = (16, 16, 16)) -> np.ndarray:
    """A smooth random uint8 volume [D, H, W, 1]."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    field = (field - field.min()) / (field.max() - field.min())
    return np.round(field * 255).astype(np.uint8)[..., None]


def test_pixel_ssim_of_volumes():
    a, b = _volume(1), _volume(2)
    assert pixel_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert pixel_ssim(a, b) < 0.5
    # A training volume of another size is resized (trilinearly) to the generated one's.
    big = resize_volume(a, (32, 32, 32))
    assert big.shape == (32, 32, 32, 1) and big.dtype == np.uint8
    assert pixel_ssim(a, big) > 0.8
    with pytest.raises(ValueError, match="same channels"):
        pixel_ssim(a, np.repeat(a, 3, axis=-1))
    with pytest.raises(ValueError, match="two volumes"):
        pixel_ssim(a, a[0])


def test_audit_of_volumes_flags_the_exact_copy():
    train = [_volume(i) for i in range(5)]
    generated = [train[3].copy(), _volume(100), _volume(101)]
    # Features that rank a wrong candidate first for the copy: the 3-D SSIM must still find volume 3.
    train_f = np.eye(5, dtype=np.float32)
    gen_f = np.array([[0, 0, 0, 0.9, 1.0], [1, 0.5, 0, 0, 0], [0, 1, 0.5, 0, 0]], np.float32)
    report = audit(gen_f, train_f, lambda g: generated[g], lambda j: train[j], k=2)
    assert report.train_index[0].tolist() == [4, 3]
    train_idx, _, sim = report.match_scores()
    assert train_idx[0] == 3 and sim[0] == pytest.approx(1.0, abs=1e-6)
    assert np.all(sim[1:] < 0.5)
    np.testing.assert_array_equal(report.near_copies(0.9), [True, False, False])
    # Each volume is drawn by its three mid-slices: a tile for each.
    picture = pairs_picture(report.closest_pairs(2), lambda g: generated[g], lambda j: train[j], tile=32)
    assert picture.size == (2 * 3 * 32 + 12, 2 * (32 + 14 + 6))


class _SliceFeatures:
    """Stands in for the Inception extractor (no weights, no compilation): a slice's feature is its pixels
    resized to 8x8. Records the size of every slice it is given, in order."""

    batch_size = 4

    def __init__(self, **_):
        self.sizes: list[tuple[int, ...]] = []

    @staticmethod
    def feature(image: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(as_rgb_uint8(image)).resize((8, 8), Image.BILINEAR), np.float32).ravel()

    def extract(self, images, *, total=None, progress=True, desc=""):
        images = list(images)
        self.sizes += [im.shape[:2] for im in images]
        return {"pool": np.stack([self.feature(im) for im in images])}


def test_cli_on_volume_folders(tmp_path, monkeypatch, capsys):
    # Volumes that are not cubes: their three planes have three sizes.
    shape = (12, 16, 20)
    train = [_volume(i, shape) for i in range(6)]
    for i, volume in enumerate(train):
        folder = tmp_path / "train" / ("a" if i < 3 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        write_nifti_atomic(folder / f"{i}.nii.gz", volume)
    (tmp_path / "gen" / "a").mkdir(parents=True)
    write_nifti_atomic(tmp_path / "gen" / "a" / "0.nii.gz", train[4])
    write_nifti_atomic(tmp_path / "gen" / "a" / "1.nii.gz", _volume(77, shape))
    extractors: list[_SliceFeatures] = []

    def make_extractor(**_):
        extractors.append(_SliceFeatures())
        return extractors[-1]

    monkeypatch.setattr(cli, "InceptionFeatureExtractor", make_extractor)
    out, cache = tmp_path / "out", tmp_path / "tf.npz"
    argv = ["--train", str(tmp_path / "train"), "--generated", str(tmp_path / "gen"), "--out", str(out),
            "--k", "3", "--no-progress", "--train-features", str(cache)]
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_train"] == 6 and report["n_generated"] == 2 and report["n_near_copies"] == 1
    copy = next(m for m in report["matches"] if m["generated"].endswith("a/0.nii.gz"))
    assert copy["train"].endswith("b/4.nii.gz") and copy["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert copy["cosine"] == pytest.approx(1.0, abs=1e-6) and copy["near_copy"]
    other = next(m for m in report["matches"] if m["generated"].endswith("a/1.nii.gz"))
    assert other["ssim"] < 0.5 and not other["near_copy"]
    assert "1 of 2 generated volumes (50.00%)" in capsys.readouterr().out
    with Image.open(out / "closest_pairs.png") as png:
        assert png.size[0] == 2 * 3 * 128 + 12

    # The slices went plane by plane within chunks of batch_size volumes (4, then 2): one size per run.
    axial, coronal, sagittal = (16, 20), (12, 20), (12, 16)
    expected_sizes = [axial] * 4 + [coronal] * 4 + [sagittal] * 4 + [axial] * 2 + [coronal] * 2 + [sagittal] * 2
    assert extractors[0].sizes[:18] == expected_sizes
    # The cache holds the slice features volume by volume, plane by plane (a volume folder's FeatureSet),
    # i.e. the audit's feature of a volume is its three mid-slices' features concatenated.
    with np.load(cache) as saved:
        assert saved["planes"].tolist() == ["axial", "coronal", "sagittal"] * 6
        assert saved["labels"].tolist() == ["a"] * 9 + ["b"] * 9
        expected = np.stack([np.concatenate([_SliceFeatures.feature(s) for s in volume_slices(v)]) for v in train])
        np.testing.assert_array_equal(saved["features"].reshape(6, -1), expected)

    # The same audit from the cache (no training slice extracted); an image cache is refused for volumes.
    extractor = _SliceFeatures()
    result = audit_folders(tmp_path / "train", tmp_path / "gen", extractor=extractor, k=3, train_features_cache=cache,
                           progress=False)
    assert result.volumes and result.summary(0.9, None) == report and len(extractor.sizes) == 2 * 3
    np.savez(tmp_path / "images.npz", features=np.zeros((6, 192), np.float32), labels=np.array(["a"] * 6))
    with pytest.raises(ValueError, match="mid-slice features of the 6 volumes"):
        audit_folders(tmp_path / "train", tmp_path / "gen", extractor=extractor,
                      train_features_cache=tmp_path / "images.npz", progress=False)
    # Images against volumes is refused, naming both folders.
    (tmp_path / "pngs").mkdir()
    Image.fromarray(_image(1)).save(tmp_path / "pngs" / "x.png")
    assert cli.main(["--train", str(tmp_path / "pngs"), "--generated", str(tmp_path / "gen"), "--no-progress",
                     "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "holds images but" in err and "holds volumes" in err
