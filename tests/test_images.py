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


def test_plane_slices_cut_each_axis_superior_up():
    from medfusion_jax.images import PLANES, orthogonal_mid_slices, plane_slices

    v = np.arange(2 * 4 * 6 * 5).reshape(2, 4, 6, 5, 1)
    np.testing.assert_array_equal(plane_slices(v, "axial"), v[:, 2])
    np.testing.assert_array_equal(plane_slices(v, "coronal"), v[:, ::-1, 3])
    np.testing.assert_array_equal(plane_slices(v, "sagittal"), v[:, ::-1, :, 2])
    # Several positions: volume by volume, then position by position (index int(p * n)).
    two = plane_slices(v, "axial", (0.0, 0.75))
    np.testing.assert_array_equal(two, np.stack([v[0, 0], v[0, 3], v[1, 0], v[1, 3]]))
    picture = orthogonal_mid_slices(v.astype(np.uint8))
    assert picture.shape == (2, 6, 18, 1)
    np.testing.assert_array_equal(picture[:, 1:5, 6:11], v[:, ::-1, 3].astype(np.uint8))  # coronal 4x5, centred
    assert PLANES == ("axial", "coronal", "sagittal")
    with pytest.raises(ValueError, match="plane must be one of"):
        plane_slices(v, "oblique")
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\)"):
        plane_slices(v, "axial", (1.0,))


def test_volume_folders_are_listed_and_told_apart_from_image_folders(tmp_path):
    from medfusion_jax.images import holds_volumes, list_volume_files, load_volume, write_nifti_atomic

    volume = np.random.default_rng(0).integers(0, 256, size=(3, 4, 5, 1)).astype(np.uint8)
    for name in ("b", "a"):
        (tmp_path / "vols" / name).mkdir(parents=True)
        write_nifti_atomic(tmp_path / "vols" / name / "000000.nii.gz", volume)
    files = list_volume_files(tmp_path / "vols")
    assert [(f.label, f.path.name) for f in files] == [("a", "000000.nii.gz"), ("b", "000000.nii.gz")]
    np.testing.assert_array_equal(load_volume(files[0].path), volume)
    assert holds_volumes(tmp_path / "vols")
    _save(tmp_path / "imgs" / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert not holds_volumes(tmp_path / "imgs") and not holds_volumes(tmp_path / "missing")
    with pytest.raises(ImageFilesError, match="no volumes in"):
        list_volume_files(tmp_path / "imgs")
    (tmp_path / "vols" / "a" / "broken.nii.gz").write_bytes(b"not nifti")
    with pytest.raises(ImageFilesError, match="cannot read volume .*broken.nii.gz"):
        load_volume(tmp_path / "vols" / "a" / "broken.nii.gz")
