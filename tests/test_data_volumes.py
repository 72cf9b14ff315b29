"""Volume data (``volume-folder``): NIfTI and DICOM-series readers, orientation, the transforms against
their definitions, and bad volumes reported with their paths."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from medfusion_jax.data import DATASETS, ImageError, make_dataset, volumes
from medfusion_jax.data.describe import describe
from medfusion_jax.images import write_nifti_atomic


def write_slice(path, pixels, z, *, spacing=(0.8, 0.7), slope=1.0, intercept=-1024.0):
    """One axial CT slice at height ``z`` mm (orientation rows/columns = +x/+y of the patient)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelSpacing = list(spacing)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(folder, stack, *, thickness=2.0, skip=(), order=None):
    """Slices of ``stack`` [z, rows, cols] at z = k * thickness, files named in ``order`` (default shuffled)."""
    folder.mkdir(parents=True)
    order = order if order is not None else np.random.default_rng(0).permutation(len(stack))
    for name, k in enumerate(order):
        if k not in skip:
            write_slice(folder / f"IM{name:04d}.dcm", stack[k], k * thickness)


def ramp(shape):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


# -- readers -------------------------------------------------------------------------------------------


def test_nifti_round_trip_and_reorientation(tmp_path):
    import nibabel

    volume = np.random.default_rng(0).integers(0, 255, (5, 6, 7, 1), dtype=np.uint8)
    write_nifti_atomic(tmp_path / "a.nii.gz", volume)
    read = volumes.read_nifti_volume(str(tmp_path / "a.nii.gz"))
    np.testing.assert_array_equal(read.data, volume[..., 0].astype(np.float32))
    assert read.spacing == (1.0, 1.0, 1.0)
    # The same anatomy stored RAS+ (x to the patient's left -> right) with 0.5/0.6/2 mm voxels: the
    # reader brings it to (D, H, W) = (inferior->superior, anterior->posterior, right->left).
    ras = volume[..., 0].transpose(2, 1, 0)[::-1, ::-1, :]
    nibabel.save(nibabel.Nifti1Image(ras, np.diag([0.5, 0.6, 2.0, 1.0])), tmp_path / "b.nii")
    read = volumes.read_nifti_volume(str(tmp_path / "b.nii"))
    np.testing.assert_array_equal(read.data, volume[..., 0].astype(np.float32))
    assert read.spacing == pytest.approx((2.0, 0.6, 0.5))


def test_dicom_series_is_ordered_by_position_with_its_spacing(tmp_path):
    stack = (ramp((6, 4, 5)) % 1000).astype(np.uint16)
    write_series(tmp_path / "s", stack, thickness=2.5)
    read = volumes.read_dicom_series(str(tmp_path / "s"))
    np.testing.assert_array_equal(read.data, stack.astype(np.float32) - 1024.0)  # Hounsfield units
    assert read.spacing == pytest.approx((2.5, 0.8, 0.7))


def test_broken_series_and_files_are_refused_with_their_path(tmp_path):
    stack = np.zeros((6, 4, 4), np.uint16)
    write_series(tmp_path / "gap", stack, skip={3})
    with pytest.raises(ImageError, match=r"gap: 1 slice\(s\) missing between"):
        volumes.read_dicom_series(str(tmp_path / "gap"))
    (tmp_path / "uneven").mkdir()
    for k, z in enumerate([0.0, 2.0, 4.0, 7.0, 9.0]):
        write_slice(tmp_path / "uneven" / f"{k}.dcm", stack[0], z)
    with pytest.raises(ImageError, match="uneven: inconsistent slice spacing"):
        volumes.read_dicom_series(str(tmp_path / "uneven"))
    write_nifti_atomic(tmp_path / "whole.nii.gz", np.zeros((8, 8, 8, 1), np.uint8) + 7)
    data = gzip.decompress((tmp_path / "whole.nii.gz").read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(data[: len(data) // 2]))
    with pytest.raises(ImageError, match="cut.nii.gz: cannot read NIfTI"):
        volumes.read_nifti_volume(str(tmp_path / "cut.nii.gz"))


# -- transforms against their definitions ------------------------------------------------------------


def test_transforms_follow_their_definitions():
    # Trilinear resize keeps a linear ramp linear and a constant constant.
    x = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None, None], (8, 4, 6))
    out = volumes.resize(x, 4)
    assert out.shape == (4, 4, 4)
    np.testing.assert_allclose(np.diff(out[:, 0, 0])[1:-1], 2.0, atol=1e-5)
    np.testing.assert_allclose(volumes.resize(np.full((3, 5, 7), 2.5, np.float32), 6), 2.5, atol=1e-6)
    # Crop-or-pad: centred, padded with the minimum.
    y = ramp((2, 6, 4)) + 1
    padded = volumes.crop_or_pad(y, 4)
    np.testing.assert_array_equal(padded[1:3, :, :], y[:, 1:5, :])
    assert padded[0].max() == y.min() and padded[3].min() == y.min()
    # z-score: the mean maps to the middle grey, +-3 standard deviations to 0 and 255 (clipped beyond).
    z = np.array([-3.0, 0.0, 3.0, 6.0] * 4, np.float32)
    mean, std = z.mean(), z.std()
    values = volumes.to_uint8(z, "zscore")
    expected = np.clip(np.round(((z - mean) / std / 6 + 0.5) * 255), 0, 255)
    np.testing.assert_array_equal(values, expected)
    # Rescale: min to 0, max to 255.
    np.testing.assert_array_equal(volumes.to_uint8(np.array([2.0, 4.0, 6.0]), "rescale"), [0, 128, 255])
    # Resampling to a spacing changes the shape by spacing / target.
    vol = volumes.Volume(np.zeros((10, 20, 20), np.float32), (2.0, 0.5, 0.5))
    assert volumes.resample(vol, (1.0, 1.0, 1.0)).data.shape == (20, 10, 10)


# -- data sets -----------------------------------------------------------------------------------------


@pytest.fixture
def volume_tree(tmp_path):
    """Two classes: NIfTI files and a DICOM series under 'healthy', NIfTI under 'lesion', plus a broken file."""
    rng = np.random.default_rng(1)
    for cls in ("healthy", "lesion"):
        (tmp_path / cls).mkdir()
        for k in range(2):
            write_nifti_atomic(tmp_path / cls / f"v{k}.nii.gz", rng.integers(0, 255, (10, 12, 8, 1), dtype=np.uint8))
    write_series(tmp_path / "healthy" / "series1", (ramp((5, 8, 8)) % 500).astype(np.uint16))
    (tmp_path / "lesion" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really")
    return tmp_path


def test_class_folders_of_nifti_files_and_dicom_series(volume_tree):
    src = make_dataset("volume-folder", str(volume_tree), image_size=16)
    assert src.class_names == ("healthy", "lesion") and len(src) == 6
    assert src.class_counts() == {"healthy": 3, "lesion": 3}
    item = src[0]
    assert item["image"].shape == (16, 16, 16, 1) and item["image"].dtype == np.uint8
    series = [i for i, p in enumerate(src.paths) if p.endswith("series1")]
    assert len(series) == 1 and src[series[0]]["image"].shape == (16, 16, 16, 1)
    broken = src.paths.index(str(volume_tree / "lesion" / "broken.nii.gz"))
    with pytest.raises(ImageError, match="broken.nii.gz: cannot read NIfTI"):
        src[broken]
    assert DATASETS["volume-folder"].spatial_dims == 3
    report = describe("volume-folder", str(volume_tree), image_size=16, sample=None)
    assert not report["ok"] and report["problem_counts"] == {"unreadable": 1}
    assert report["problems"][0]["path"].endswith("broken.nii.gz")


def test_csv_labelled_volumes(volume_tree):
    (volume_tree / "labels.csv").write_text("path,label\nhealthy/v0.nii.gz,b\nlesion/v1.nii.gz,a\n"
                                            "healthy/series1,a\nnowhere.nii.gz,b\n")
    src = make_dataset("volume-folder", str(volume_tree), image_size=8)
    assert src.class_names == ("a", "b") and list(src.labels) == [1, 0, 0]
    assert [p.kind for p in src.problems] == ["missing_file"] and src.problems[0].path.endswith("labels.csv:5")
    with pytest.raises(Exception, match="labels.csv:5"):
        make_dataset("volume-folder", str(volume_tree), image_size=8, strict=True)


def test_volume_transform_flags_reach_the_source(volume_tree, capsys):
    """--volume-fit/--volume-spacing/--volume-intensity of the training commands become the source's
    VolumeTransform; on another data set, or with a bad value, the command stops naming the flag."""
    from medfusion_jax.training.stages import open_source
    from train import autoencoder as ae_cli

    base = ["--dataset", "volume-folder", "--data-dir", str(volume_tree), "--image-size", "16"]
    config = ae_cli.make_config(ae_cli.parse_args([*base, "--volume-fit", "crop-or-pad", "--volume-spacing",
                                                   "1,1.5,2", "--volume-intensity", "rescale"]))
    assert (config.data.volume_fit, config.data.volume_spacing, config.data.volume_intensity) == \
        ("crop-or-pad", (1.0, 1.5, 2.0), "rescale")
    source = open_source(config.data)
    assert source.options == volumes.VolumeTransform(spacing=(1.0, 1.5, 2.0), fit="crop-or-pad",
                                                     intensity="rescale")
    # The item is the definition applied: resampled to the spacing, cropped or padded, rescaled.
    path = str(volume_tree / "healthy" / "v0.nii.gz")
    expected = volumes.transform(volumes.read_volume(path), 16, source.options)
    np.testing.assert_array_equal(source[source.paths.index(path)]["image"], expected)
    assert open_source(ae_cli.make_config(ae_cli.parse_args(base)).data).options == volumes.VolumeTransform()
    assert ae_cli.main(["--dataset", "phantom-brain", "--volume-fit", "crop-or-pad", "--steps", "1"]) == 2
    assert "apply to --dataset volume-folder only, not phantom-brain" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ae_cli.parse_args([*base, "--volume-spacing", "1,2"])
    assert "expected three numbers D,H,W in mm" in capsys.readouterr().err
