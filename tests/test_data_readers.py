"""Readers of the paper's layouts and of image folders, preparation to array_record, describe.

Every fixture tree is written into tmp_path in the exact on-disk layout of the release it imitates
(real column names, numbered sub-folders, the awkward cases), with tiny images.
"""

import io
import json
import os
from contextlib import redirect_stdout

import numpy as np
import pytest
from PIL import Image

from medfusion_jax.data import DataError, make_dataset
from medfusion_jax.data.__main__ import main as data_main
from medfusion_jax.data.describe import describe
from medfusion_jax.data.prepared import PreparedSource

CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices"
)


def save(path, array, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def image(seed, shape=(40, 48, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def make_airogs(root):
    """Official layout: train_labels.csv + images spread over numbered folders, with faults."""
    rows = ["challenge_id,class"]
    for i in range(8):
        cid = f"TRAIN{i:06d}"
        save(os.path.join(root, str(i % 3), cid + ".jpg"), image(i), quality=95)
        rows.append(f"{cid},{'RG' if i in (1, 4) else 'NRG'}")
    rows.append("TRAIN000003,NRG")  # duplicate id
    rows.append("TRAIN000099,RG")  # file missing
    rows.append("TRAIN000005,maybe")  # duplicate id (reported once, as a duplicate)
    save(os.path.join(root, "5", "TRAIN000777.jpg"), image(77), quality=95)  # not in the CSV
    rows.insert(1, "TRAIN000100,glaucoma")  # unknown label, file exists
    save(os.path.join(root, "4", "TRAIN000100.jpg"), image(100), quality=95)
    with open(os.path.join(root, "train_labels.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")


def make_chexpert(root, n_patients=6):
    """CheXpert-v1.0-small layout: Path starts with the release folder; lateral and uncertain rows."""
    release = os.path.join(root, "CheXpert-v1.0-small")
    values = ["1.0", "-1.0", "", "0.0", "1.0", "2.0"]
    lines = [CHEXPERT_HEADER]
    for p in range(n_patients):
        for view, kind in (("view1_frontal", "Frontal"), ("view2_lateral", "Lateral")):
            rel = f"CheXpert-v1.0-small/train/patient{p:05d}/study1/{view}.jpg"
            if not (p == 3 and kind == "Frontal"):  # patient 3's frontal file is missing
                save(os.path.join(root, rel), image(p, (36, 30)), quality=95)
            lines.append(f"{rel},Female,60,{kind},AP,,,{values[p]},,,,,,,,,,,")
    with open(os.path.join(release, "train.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    rel = "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"
    save(os.path.join(root, rel), image(9, (36, 30)), quality=95)
    with open(os.path.join(release, "valid.csv"), "w") as f:
        f.write(CHEXPERT_HEADER + "\n" + f"{rel},Male,70,Frontal,PA,,,1.0,,,,,,,,,,,\n")
    return release


def test_airogs_counts_labels_and_problems(tmp_path):
    make_airogs(tmp_path)
    src = make_dataset("airogs", str(tmp_path), image_size=32)
    assert len(src) == 8
    assert src.class_counts() == {"NRG": 6, "RG": 2}
    labels = {k: int(l) for k, l in zip(src.keys, src.labels, strict=True)}
    assert labels["TRAIN000001"] == 1 and labels["TRAIN000000"] == 0
    item = src[0]
    assert item["image"].shape == (32, 32, 3) and item["image"].dtype == np.uint8
    kinds = sorted(p.kind for p in src.problems)
    assert kinds == ["duplicate_id", "duplicate_id", "ignored_file", "missing_file", "unknown_label"]
    missing = next(p for p in src.problems if p.kind == "missing_file")
    assert "TRAIN000099" in missing.message and "train_labels.csv" in missing.path
    with pytest.raises(DataError, match="4 problem"):  # the ignored image is only a warning
        make_dataset("airogs", str(tmp_path), image_size=32, strict=True)


def test_airogs_reference_layout_csv_in_parent(tmp_path):
    data = tmp_path / "data_256x256"
    for i in range(2):
        save(str(data / f"TRAIN{i:06d}.jpg"), image(i), quality=95)
    (tmp_path / "train_labels.csv").write_text("challenge_id,class\nTRAIN000000,NRG\nTRAIN000001,RG\n")
    src = make_dataset("airogs", str(data), image_size=32)
    assert src.class_counts() == {"NRG": 1, "RG": 1}


def test_chexpert_frontal_only_uncertain_is_positive(tmp_path):
    release = make_chexpert(tmp_path)
    src = make_dataset("chexpert", release, image_size=24)
    # Frontal rows: patients 0..5; patient 3's file is missing; patient 5 has the unknown "2.0".
    assert len(src) == 4
    by_patient = {k.split("/")[2]: int(l) for k, l in zip(src.keys, src.labels, strict=True)}
    assert by_patient == {"patient00000": 1, "patient00001": 1, "patient00002": 0, "patient00004": 1}
    assert all("lateral" not in k for k in src.keys)
    assert sorted(p.kind for p in src.problems) == ["missing_file", "unknown_label"]
    x = src[0]["image"]
    assert x.shape == (24, 24, 3) and np.array_equal(x[..., 0], x[..., 2])
    assert make_dataset("chexpert", release, image_size=24, channels=1)[0]["image"].shape == (24, 24, 1)
    valid = make_dataset("chexpert", str(tmp_path), split="validation", image_size=24)  # parent dir works too
    assert valid.class_counts() == {"no cardiomegaly": 0, "cardiomegaly": 1}


def test_chexpert_csv_without_expected_columns(tmp_path):
    (tmp_path / "train.csv").write_text("Path,Sex,Age,Cardiomegaly\nx.jpg,Male,3,1.0\n")
    with pytest.raises(DataError) as e:
        make_dataset("chexpert", str(tmp_path))
    assert str(tmp_path / "train.csv") in str(e.value) and "'Frontal/Lateral'" in str(e.value)


def test_crcdx_both_namings_nested_splits_and_empty_class(tmp_path):
    for i, folder in enumerate(["train/MSIH/slideA", "train/nonMSIH", "train/MSIMUT/x/y", "train/MSS", "train/MSS"]):
        save(str(tmp_path / folder / f"tile{i}.jpg"), image(i, (40, 40, 3)), quality=95)
    save(str(tmp_path / "train/unsorted/tile9.png"), image(9, (40, 40, 3)))
    save(str(tmp_path / "test/MSIH/t.png"), image(10, (40, 40, 3)))
    os.makedirs(tmp_path / "test/nonMSIH")
    src = make_dataset("crcdx", str(tmp_path), image_size=32)
    assert src.class_counts() == {"MSIH": 2, "nonMSIH": 3}
    assert [p.kind for p in src.problems] == ["unknown_label"]
    test = make_dataset("crcdx", str(tmp_path), split="test", image_size=32)
    assert test.class_counts() == {"MSIH": 1, "nonMSIH": 0}
    assert [p.kind for p in test.problems] == ["empty_class"]
    assert "nonMSIH" in test.problems[0].path


def test_folder_classes_flat_and_mixed_formats(tmp_path):
    save(str(tmp_path / "cls/benign/a.png"), image(1, (40, 40)))
    save(str(tmp_path / "cls/benign/nested/b.jpg"), image(2, (40, 50, 3)), quality=90)
    save(str(tmp_path / "cls/malignant/c.png"), image(3, (40, 40)).astype(np.uint16) * 200)  # 16-bit
    save(str(tmp_path / "cls/malignant/d.tif"), image(4, (40, 40, 3)))
    os.makedirs(tmp_path / "cls/unknown")
    save(str(tmp_path / "cls/stray.png"), image(5, (40, 40)))
    src = make_dataset("folder", str(tmp_path / "cls"), image_size=32)
    assert src.class_names == ("benign", "malignant", "unknown")
    assert src.class_counts() == {"benign": 2, "malignant": 2, "unknown": 0}
    assert sorted(p.kind for p in src.problems) == ["empty_class", "ignored_file"]
    for i in range(len(src)):
        assert src[i]["image"].shape == (32, 32, 3)
    report = describe("folder", str(tmp_path / "cls"), image_size=32, sample=None)
    (note,) = [p for p in report["problems"] if p["kind"] == "not_8bit"]
    assert note["path"].endswith("c.png") and "16-bit" in note["message"] and note["severity"] == "warning"
    save(str(tmp_path / "flat/x.png"), image(6, (40, 40, 3)))
    flat = make_dataset("folder", str(tmp_path / "flat"), image_size=32)
    assert flat.class_names == ("flat",) and len(flat) == 1


def test_missing_data_dir_is_named(tmp_path):
    for name in ("airogs", "chexpert", "crcdx", "folder"):
        with pytest.raises(DataError, match=f"{tmp_path / 'nope'}: data dir does not exist"):
            make_dataset(name, str(tmp_path / "nope"))


def test_describe_lists_every_problem_without_stopping(tmp_path):
    make_airogs(tmp_path)
    save(str(tmp_path / "0/TRAIN000006.jpg"), image(6, (10, 10, 3)))  # too small for 32
    (tmp_path / "1/TRAIN000007.jpg").write_bytes(b"")  # zero-byte
    data = (tmp_path / "2/TRAIN000002.jpg").read_bytes()
    (tmp_path / "2/TRAIN000002.jpg").write_bytes(data[: len(data) // 2])  # truncated
    report = describe("airogs", str(tmp_path), image_size=32, sample=None)
    assert report["classes"] == {"NRG": 6, "RG": 2}
    counts = report["problem_counts"]
    assert counts == {"duplicate_id": 2, "ignored_file": 1, "missing_file": 1, "unknown_label": 1,
                      "unreadable": 2, "too_small": 1}
    messages = {p["path"]: p["message"] for p in report["problems"]}
    assert messages[str(tmp_path / "1/TRAIN000007.jpg")] == "zero-byte file"
    assert "truncated" in messages[str(tmp_path / "2/TRAIN000002.jpg")]
    assert report["ok"] is False and report["sample"]["checked"] == 8
    out = io.StringIO()
    with redirect_stdout(out):
        status = data_main(["describe", "--dataset", "airogs", "--data-dir", str(tmp_path), "--image-size", "32",
                            "--all"])
    assert status == 1 and json.loads(out.getvalue())["problem_counts"] == counts


def test_prepare_airogs_reads_back_identical(tmp_path):
    from medfusion_jax.data import prepare

    src_dir = tmp_path / "airogs"
    make_airogs(src_dir)
    (src_dir / "0/TRAIN000000.jpg").write_bytes(b"")  # skipped during preparation, and counted
    out = io.StringIO()
    with redirect_stdout(out):
        status = prepare.main(["--dataset", "airogs", "--data-dir", str(src_dir), "--out", str(tmp_path / "prep"),
                               "--image-size", "32", "--workers", "0"])
    summary = json.loads(out.getvalue())
    assert status == 0 and summary["skipped"] == {"train": 1}
    assert summary["class_counts"] == {"train": {"NRG": 5, "RG": 2}}
    prepared = make_dataset("airogs", str(tmp_path / "prep"), image_size=32)
    assert isinstance(prepared, PreparedSource) and len(prepared) == 7
    assert prepared.class_counts() == {"NRG": 5, "RG": 2}
    assert describe("airogs", str(tmp_path / "prep"), image_size=32)["prepared"]["skipped_when_prepared"] == 1
    raw = make_dataset("airogs", str(src_dir), image_size=32, use_prepared=False)
    raw_by_key = {k: i for i, k in enumerate(raw.keys)}
    for i in range(len(prepared)):
        j = raw_by_key[prepared.describe_item(i)]
        np.testing.assert_array_equal(prepared[i]["image"], raw[j]["image"])
        assert prepared[i]["label"] == raw[j]["label"]
    with pytest.raises(DataError, match="not 64"):
        make_dataset("airogs", str(tmp_path / "prep"), image_size=64)
    # Records are stored uncompressed (reading is a copy): the raw pixels are in the file as they are.
    folder = os.path.join(str(tmp_path / "prep"), "medfusion_airogs", "32px-3ch-raw", "2.0.0")
    (records,) = [f for f in os.listdir(folder) if ".array_record-" in f]
    with open(os.path.join(folder, records), "rb") as f:
        assert prepared[3]["image"].tobytes() in f.read()
    # An interrupted preparation leaves no copy that could be found; a finished one is reused.
    assert [f for f in os.listdir(os.path.dirname(folder)) if f != "2.0.0"] == []
    from medfusion_jax.data.preparation import prepare as prepare_again

    assert prepare_again("airogs", str(src_dir), str(tmp_path / "prep"), image_size=32) == folder


def test_an_interrupted_preparation_leaves_nothing_that_is_read(tmp_path, monkeypatch):
    from medfusion_jax.data import preparation

    src_dir = tmp_path / "airogs"
    make_airogs(src_dir)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(preparation, "encode_record", crash)
    with pytest.raises(KeyboardInterrupt):
        preparation.prepare("airogs", str(src_dir), str(tmp_path / "prep"), image_size=32)
    assert os.listdir(tmp_path / "prep" / "medfusion_airogs" / "32px-3ch-raw") == []
    with pytest.raises(DataError, match="no prepared airogs"):
        make_dataset("airogs", str(tmp_path / "prep"), image_size=32, use_prepared=True)


def test_copies_prepared_by_the_earlier_tfds_builders_still_read():
    """Folders written by TFDS (version 1.0.0, until 2026-12-07) read as TFDS's own reader read them then
    (tests/data/prepared_tfds/make_fixture.py)."""
    root = os.path.join(os.path.dirname(__file__), "data", "prepared_tfds")
    expected = np.load(os.path.join(root, "expected.npz"))
    for name, split in (("airogs", "train"), ("chexpert", "train"), ("chexpert", "validation")):
        source = make_dataset(name, root, split=split, image_size=16, channels=3)
        assert isinstance(source, PreparedSource) and source.tfds
        stored = expected[f"{name}/{split}/image"]
        assert len(source) == len(stored) > 0
        for i in range(len(source)):
            image = stored[i] if stored[i].ndim == 3 else stored[i][:, :, None]
            np.testing.assert_array_equal(source[i]["image"], np.broadcast_to(image, (16, 16, 3)))
            assert source[i]["label"] == expected[f"{name}/{split}/label"][i]
            assert source.describe_item(i) == expected[f"{name}/{split}/id"][i]
    assert make_dataset("airogs", root, image_size=16).class_counts() == {"NRG": 6, "RG": 2}


def test_prepare_chexpert_stores_one_channel_png(tmp_path):
    from medfusion_jax.data.preparation import prepare

    release = make_chexpert(tmp_path / "src")
    path = prepare("chexpert", release, str(tmp_path / "prep"), image_size=24, encoding="png")
    assert path.endswith(os.path.join("medfusion_chexpert", "24px-1ch-png", "2.0.0"))
    train = make_dataset("chexpert", str(tmp_path / "prep"), image_size=24)
    valid = make_dataset("chexpert", str(tmp_path / "prep"), split="validation", image_size=24)
    raw = make_dataset("chexpert", release, image_size=24, use_prepared=False)
    assert len(train) == 4 and len(valid) == 1
    x = train[0]["image"]
    assert x.shape == (24, 24, 3) and np.array_equal(x[..., 0], x[..., 1])
    j = raw.keys.index(train.describe_item(0))
    np.testing.assert_array_equal(x, raw[j]["image"])  # PNG is lossless
