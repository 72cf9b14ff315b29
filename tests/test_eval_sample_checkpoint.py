"""``python -m eval.sample --checkpoint``: sampling a run directory into an ImageFolder, resumably.

The run is converted from fixture Lightning checkpoints (tests/test_convert_medfusion.py), so these tests
also cover the converted-checkpoint path. Every sampling call below uses 16x16 images, 2 DDIM steps and
batch size 2 unless it tests another batch size, so they share one compiled sampler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import medfusion_jax.evaluation.sample_folder as sample_folder
from eval.sample import main
from medfusion_jax.diffusion.pipeline import ImageSampler, SampleSettings
from medfusion_jax.diffusion.schedule import make_schedule
from tests.test_convert_medfusion import IMAGE_SIZE, converted_run, reference_modules

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("no cardiomegaly", "cardiomegaly")
PER_CLASS = 3
BASE = ["--num-per-class", str(PER_CLASS), "--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return converted_run(tmp_path_factory.mktemp("converted"))


def sample(run_dir: Path, out: Path, *extra: str) -> int:
    return main(["--checkpoint", str(run_dir), *BASE, "--batch-size", "2", "--out", str(out), *extra])


def read_set(out: Path) -> dict[str, np.ndarray]:
    return {f"{folder}/{i:06d}.png": np.asarray(Image.open(out / folder / f"{i:06d}.png"))
            for folder in FOLDERS for i in range(PER_CLASS)}


def file_ids(out: Path) -> dict[str, tuple[int, int]]:
    return {f"{p.parent.name}/{p.name}": (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*/*.png")}


@pytest.fixture(scope="module")
def baseline(run_dir, tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("baseline") / "samples"
    assert sample(run_dir, out) == 0
    return read_set(out)


def test_layout_manifest_and_grid(run_dir, baseline, tmp_path):
    out = tmp_path / "s"
    assert sample(run_dir, out) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*FOLDERS, "grid.png", "samples.json"])
    images = read_set(out)
    for name, image in images.items():
        assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, baseline[name])  # same seed and settings: identical
    assert min(float(img.std()) for img in images.values()) > 5  # not a flat grey: the weights matter
    manifest = json.loads((out / "samples.json").read_text())
    assert manifest["complete"] and manifest["counts"] == {f: PER_CLASS for f in FOLDERS}
    assert (manifest["checkpoint"], manifest["step"], manifest["steps"], manifest["seed"]) == (str(run_dir), 0, 2, 0)
    assert manifest["class_names"] == list(FOLDERS) and manifest["latent_shape"] == [8, 8, 4]
    grid = np.asarray(Image.open(out / "grid.png"))  # one row per class, PER_CLASS (< 8) columns, pad 2
    assert grid.shape == (2 * (IMAGE_SIZE + 2) + 2, PER_CLASS * (IMAGE_SIZE + 2) + 2, 3)
    np.testing.assert_array_equal(grid[2 + IMAGE_SIZE + 2:2 * IMAGE_SIZE + 4, 2:IMAGE_SIZE + 2],
                                  baseline["cardiomegaly/000000.png"])


def test_other_seed_other_images(run_dir, baseline, tmp_path):
    assert sample(run_dir, tmp_path / "s", "--seed", "1") == 0
    other = read_set(tmp_path / "s")
    for name in baseline:
        assert np.abs(other[name].astype(int) - baseline[name]).mean() > 5


def test_classes_by_name_or_index(run_dir, baseline, tmp_path, capsys):
    assert sample(run_dir, tmp_path / "a", "--classes", "cardiomegaly") == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == ["cardiomegaly"]
    # Image i of a class is the same whichever other classes are sampled.
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "cardiomegaly" / "000002.png")),
                                  baseline["cardiomegaly/000002.png"])
    assert sample(run_dir, tmp_path / "b", "--classes", "2") == 2
    assert "--classes 2: the model has classes 0..1" in capsys.readouterr().err


def test_interrupted_run_completes_only_the_missing_images(run_dir, baseline, tmp_path, monkeypatch):
    out = tmp_path / "s"
    real_write = sample_folder.write_images
    batches = []

    def write_then_die(paths, images):
        if batches:
            raise KeyboardInterrupt("killed after the first batch")
        batches.append(list(paths))
        real_write(paths, images)

    monkeypatch.setattr(sample_folder, "write_images", write_then_die)
    assert sample(run_dir, out) == 130  # Ctrl-C: exit status 130, the written images stay
    monkeypatch.setattr(sample_folder, "write_images", real_write)
    first = file_ids(out)
    assert len(first) == 2 and not json.loads((out / "samples.json").read_text())["complete"]
    # A temporary file left by a kill in the middle of a write is cleaned up, never taken for an image.
    (out / FOLDERS[1] / ".000001.png.999.tmp").write_bytes(b"\x89PNG partial")

    written = []

    def write_and_record(paths, images):
        written.extend(paths)
        real_write(paths, images)

    monkeypatch.setattr(sample_folder, "write_images", write_and_record)
    assert sample(run_dir, out) == 0
    assert len(written) == 2 * PER_CLASS - 2 and not set(written) & set(batches[0])  # each image written once
    after = file_ids(out)
    assert {k: after[k] for k in first} == first  # the first batch's files were not touched
    assert not list(out.glob("*/.*.tmp"))
    final = read_set(out)
    for name in baseline:
        np.testing.assert_array_equal(final[name], baseline[name])  # equal to an uninterrupted run

    # Deleted images are regenerated, identical, and nothing else is rewritten.
    for name in ("cardiomegaly/000001.png", "no cardiomegaly/000002.png"):
        (out / name).unlink()
    before = file_ids(out)
    assert sample(run_dir, out) == 0
    after = file_ids(out)
    assert {k: after[k] for k in before} == before and len(after) == 2 * PER_CLASS
    final = read_set(out)
    for name in baseline:
        np.testing.assert_array_equal(final[name], baseline[name])


def test_other_settings_in_the_same_folder_are_refused(run_dir, tmp_path, capsys):
    out = tmp_path / "s"
    assert sample(run_dir, out) == 0
    assert sample(run_dir, out, "--eta", "0.5", "--seed", "3") == 2
    err = capsys.readouterr().err
    assert "eta (folder: 1.0, now: 0.5)" in err and "seed (folder: 0, now: 3)" in err and len(err.splitlines()) == 1
    before = file_ids(out)
    assert sample(run_dir, out, "--eta", "0.5", "--seed", "3", "--overwrite") == 0
    assert json.loads((out / "samples.json").read_text())["eta"] == 0.5
    assert all(file_ids(out)[k] != before[k] for k in before)  # every image regenerated
    # A folder that holds something else is not a sample folder.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert sample(run_dir, tmp_path / "other") == 2
    assert "has no samples.json" in capsys.readouterr().err


def test_bad_checkpoint_is_one_line_naming_the_path(tmp_path, capsys):
    for path in (tmp_path / "missing", tmp_path):
        assert main(["--checkpoint", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert str(path) in err and len(err.splitlines()) == 1 and "Traceback" not in err
    # An autoencoder run is not a diffusion run.
    from medfusion_jax.convert.medfusion import convert_medfusion
    from tests.test_convert_medfusion import vae_checkpoint

    ae = convert_medfusion(vae_checkpoint(tmp_path / "vae.ckpt"), tmp_path / "ae")
    assert main(["--checkpoint", str(ae), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "autoencoder run" in capsys.readouterr().err
    # A damaged checkpoint (a run directory whose weights are gone).
    run = converted_run(tmp_path, "damaged")
    for item in (run / "checkpoints" / "0" / "params").iterdir():
        if item.is_file():
            item.unlink()
    assert main(["--checkpoint", str(run), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(run) in err and len(err.splitlines()) == 1


def test_converted_checkpoint_samples_like_the_in_memory_modules(run_dir, baseline):
    """The converted run gives exactly the images of the original weights sampled directly."""
    vae, unet = reference_modules()
    sampler = ImageSampler(unet, vae, make_schedule(), latent_size=(8, 8), settings=SampleSettings(num_steps=2, seed=0),
                           batch_size=2)
    items = [(c, i) for c in range(2) for i in range(PER_CLASS)]
    images = np.concatenate([sampler(items[k:k + 2]) for k in range(0, len(items), 2)])
    for (c, i), image in zip(items, images, strict=True):
        np.testing.assert_array_equal(image, baseline[f"{FOLDERS[c]}/{i:06d}.png"])


def _close(a: dict, b: dict) -> tuple[int, float]:
    """(max |difference|, fraction of differing pixel values) over a set of images."""
    diffs = [np.abs(a[k].astype(int) - b[k]) for k in b]
    return max(int(d.max()) for d in diffs), float(np.mean([np.mean(d > 0) for d in diffs]))


def test_batch_size_does_not_change_the_images(run_dir, baseline, tmp_path):
    # Per-image keys: the images are the same up to float32 rounding of the batched convolutions.
    assert sample(run_dir, tmp_path / "s", "--batch-size", "3") == 0
    worst, fraction = _close(read_set(tmp_path / "s"), baseline)
    assert worst <= 1 and fraction < 0.01, (worst, fraction)


SHARDED = r"""
import sys
from medfusion_jax.xla_cpu import apply_cpu_defaults
apply_cpu_defaults()  # before jax starts its backend, as the in-process baseline (conftest)
import jax
from eval.sample import main
assert jax.device_count() == 4, jax.devices()
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sharded_over_four_devices_gives_the_same_images(run_dir, baseline, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = tmp_path / "s"
    # --batch-size 3 is rounded up to 4 (one image per device); 6 images: a full batch and a padded one.
    args = ["--checkpoint", str(run_dir), *BASE, "--batch-size", "3", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-c", SHARDED, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "samples.json").read_text())
    assert manifest["devices"] == 4 and manifest["batch_size"] == 4
    worst, fraction = _close(read_set(out), baseline)
    assert worst <= 1 and fraction < 0.01, (worst, fraction)
