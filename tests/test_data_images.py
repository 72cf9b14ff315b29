"""Decoding, bit depth, DICOM windowing and the reference resize/crop (medfusion_jax.data.images)."""

import os

import numpy as np
import pytest
from PIL import Image

from medfusion_jax.data import images
from medfusion_jax.data.errors import ImageError


def write_dicom(path, pixels, *, window=None, photometric="MONOCHROME2", slope=1.0, intercept=0.0):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_resize_follows_torchvision_resize_int():
    # torchvision Resize(256): shorter side 256, longer int(256 * long / short).
    assert images.resized_shape(1000, 750, 256) == (341, 256)
    assert images.resized_shape(750, 1000, 256) == (256, 341)
    assert images.resized_shape(390, 320, 256) == (312, 256)
    img = Image.fromarray(np.zeros((750, 1000, 3), np.uint8))
    assert images.resize_shorter_side(img, 256).size == (341, 256)


def test_center_crop_rounds_like_torchvision():
    arr = np.arange(7 * 10, dtype=np.uint8).reshape(7, 10)
    out = np.asarray(images.center_crop(Image.fromarray(arr), 4))
    # top = round(3 / 2) = 2 (banker's rounding), left = round(6 / 2) = 3
    np.testing.assert_array_equal(out, arr[2:6, 3:7])
    arr = np.arange(9 * 9, dtype=np.uint8).reshape(9, 9)
    out = np.asarray(images.center_crop(Image.fromarray(arr), 4))
    np.testing.assert_array_equal(out, arr[2:6, 2:6])  # round(2.5) = 2


def test_load_image_resize_then_crop_equals_pil_reference(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    out = images.load_image(path, image_size=32)
    ref = Image.fromarray(arr).resize((48, 32), Image.BILINEAR).crop((8, 0, 40, 32))
    np.testing.assert_array_equal(out, np.asarray(ref))
    stretched = images.load_image(path, image_size=32, geometry="stretch")
    np.testing.assert_array_equal(stretched, np.asarray(Image.fromarray(arr).resize((32, 32), Image.BILINEAR)))


def test_grayscale_is_replicated_and_rgb_reduced_to_luma(tmp_path):
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = images.load_image(tmp_path / "g.png", image_size=32)
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 1], out[..., 2])
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    one = images.load_image(tmp_path / "c.png", image_size=32, channels=1)
    assert one.shape == (32, 32, 1)
    assert int(one[0, 0, 0]) == round(0.587 * 200)


def test_16bit_png_is_rescaled_from_its_own_range(tmp_path):
    values = np.tile(np.linspace(1000, 3000, 32).astype(np.uint16), (32, 1))
    Image.fromarray(values).save(tmp_path / "d.png")
    decoded = images.decode(tmp_path / "d.png")
    arr = np.asarray(decoded.image)
    assert arr.dtype == np.uint8 and arr.min() == 0 and arr.max() == 255
    assert any("16-bit" in note for note in decoded.notes)
    assert images.probe(tmp_path / "d.png")["bits"] == 16


def test_16bit_tiff_reads(tmp_path):
    values = np.tile(np.arange(32, dtype=np.uint16) * 2000, (32, 1))
    Image.fromarray(values).save(tmp_path / "t.tif")
    out = images.load_image(tmp_path / "t.tif", image_size=32)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255


def test_dicom_window_from_tags_and_suffixless_detection(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 16), (40, 1))
    path = str(tmp_path / "IM0001")  # PACS exports often have no suffix
    write_dicom(path, ramp, window=(2048, 1024))
    assert images.is_image_file(path)
    arr = np.asarray(images.decode(path).image)
    # DICOM LINEAR window: <= c - 0.5 - (w-1)/2 -> 0, > c - 0.5 + (w-1)/2 -> 255.
    assert arr[0, 1536 // 16 - 1] == 0 and arr[0, 2560 // 16 + 1] == 255
    assert arr[0, 2048 // 16] == round(((2048 - 2047.5) / 1023 + 0.5) * 255)


def test_dicom_rescale_monochrome1_and_no_window(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 16), (40, 1))
    write_dicom(tmp_path / "a.dcm", ramp, photometric="MONOCHROME1", slope=2.0, intercept=-100.0)
    decoded = images.decode(tmp_path / "a.dcm")
    arr = np.asarray(decoded.image)
    # min/max window of the modality values, then inverted: the lowest value is white.
    assert arr[0, 0] == 255 and arr[0, -1] == 0
    assert any("MONOCHROME1" in note for note in decoded.notes)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "zero-byte file"),
        (b"this is not an image at all", "not a readable image"),
    ],
)
def test_bad_files_name_the_file_and_the_fault(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError) as e:
        images.load_image(path, image_size=16)
    assert str(path) in str(e.value) and reason in str(e.value)


def test_truncated_jpeg_and_too_small_image(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        images.load_image(tmp_path / "cut.jpg", image_size=32)
    with pytest.raises(ImageError, match=r"64x64, too small for 128x128") as e:
        images.load_image(tmp_path / "full.jpg", image_size=128)
    assert os.fspath(tmp_path / "full.jpg") in str(e.value)
    assert images.load_image(tmp_path / "full.jpg", image_size=128, allow_upscale=True).shape == (128, 128, 3)


def test_hospital_export_folder_of_suffixless_dicoms(tmp_path):
    from medfusion_jax.data import make_dataset

    ramp = np.tile(np.arange(0, 4096, 64), (64, 1))
    for cls in ("normal", "abnormal"):
        os.makedirs(tmp_path / cls)
        for i in range(2):
            write_dicom(str(tmp_path / cls / f"IM{i:04d}"), ramp, window=(2048, 4096))
    (tmp_path / "normal" / "DICOMDIR.txt").write_text("not an image")
    src = make_dataset("folder", str(tmp_path), image_size=32)
    assert src.class_names == ("abnormal", "normal") and len(src) == 4
    x = src[0]["image"]
    assert x.shape == (32, 32, 3) and x[:, 0].mean() < 20 and x[:, -1].mean() > 235
