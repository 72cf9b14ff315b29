"""Image folders for the metric CLIs: listing, PIL RGB decoding, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medfusion_jax.images import ImageFilesError, iter_images, list_image_files, load_rgb


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_class_folders_and_root_files(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    _save(tmp_path / "b_class" / "2.png", img)
    _save(tmp_path / "b_class" / "nested" / "1.png", img)
    _save(tmp_path / "a_class" / "x.jpg", img)
    _save(tmp_path / "root.png", img)
    (tmp_path / "notes.txt").write_text("not an image")
    files = list_image_files(tmp_path)
    assert [(f.label, f.path.relative_to(tmp_path).as_posix()) for f in files] == [
        ("a_class", "a_class/x.jpg"),
        ("b_class", "b_class/2.png"),
        ("b_class", "b_class/nested/1.png"),
    ]  # root.png is left out, as torchvision's ImageFolder does
    flat = tmp_path / "b_class" / "nested"
    assert [(f.label, f.path.name) for f in list_image_files(flat)] == [("", "1.png")]


def test_decoding_matches_pil_convert_rgb(tmp_path):
    gray = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    _save(tmp_path / "gray.png", gray)
    rgba = np.dstack([np.full((8, 8, 3), 200, np.uint8), np.full((8, 8), 10, np.uint8)])
    _save(tmp_path / "rgba.png", rgba)
    wide = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    Image.fromarray(wide.astype(np.int32), mode="I").save(tmp_path / "wide.tif")

    g = load_rgb(tmp_path / "gray.png")
    assert g.dtype == np.uint8 and g.shape == (8, 8, 3)
    np.testing.assert_array_equal(g, np.repeat(gray[..., None], 3, axis=2))
    # Alpha is dropped without blending.
    np.testing.assert_array_equal(load_rgb(tmp_path / "rgba.png"), rgba[..., :3])
    with Image.open(tmp_path / "wide.tif") as im:
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(load_rgb(tmp_path / "wide.tif"), expected)
    assert [im.shape for im in iter_images(list_image_files(tmp_path))] == [(8, 8, 3)] * 3


def test_missing_path(tmp_path):
    with pytest.raises(ImageFilesError, match="image folder not found: .*missing"):
        list_image_files(tmp_path / "missing")


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ImageFilesError, match="not a folder"):
        list_image_files(tmp_path / "a.png")


def test_empty_folder(tmp_path):
    (tmp_path / "class_a").mkdir()
    (tmp_path / "readme.md").write_text("no images")
    with pytest.raises(ImageFilesError, match="no images in"):
        list_image_files(tmp_path)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageFilesError, match="cannot read image .*broken.png"):
        load_rgb(bad)
