"""A minimal writer of torch.save's zip format, for test fixtures (moved out of the library: only tests write).

:func:`save_torch_file` writes plain containers and numpy arrays so that ``torch.load`` (also with
``weights_only=True``) and :func:`medfusion_jax.torch_file.load_torch_file` read them back; the tests
check both directions (``tests/test_torch_file.py``).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

from medfusion_jax.torch_file import STORAGE_DTYPES, TORCH_DTYPES

# numpy dtype -> the torch storage class of torch.save's _rebuild_tensor_v2 tensors.
_STORAGE_NAMES = {dtype: name for name, dtype in STORAGE_DTYPES.items()}
# Dtypes without a typed storage class are written as torch >= 2.3 does: an untyped storage
# plus the dtype global, through _rebuild_tensor_v3.
_UNTYPED_DTYPE_NAMES = {
    dtype: name for name, dtype in TORCH_DTYPES.items() if dtype not in _STORAGE_NAMES
}
_ALIGNMENT = 64  # torch aligns storage data in the archive to 64 bytes (.storage_alignment)


class _PickleWriter:
    """Writes protocol-2 pickle opcodes for the values :func:`save_torch_file` supports, laid out
    as torch's own pickler does, and collects the storages the tensors refer to."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        # id(root array) -> (storage key, root array); holding the root keeps its id valid.
        self.storages: dict[int, tuple[str, np.ndarray]] = {}

    def dump(self, obj: Any) -> bytes:
        self.out.write(pickle.PROTO + b"\x02")
        self.save(obj)
        self.out.write(pickle.STOP)
        return self.out.getvalue()

    def save(self, obj: Any) -> None:
        write = self.out.write
        if obj is None:
            write(pickle.NONE)
        elif obj is True or obj is False:
            write(pickle.NEWTRUE if obj else pickle.NEWFALSE)
        elif type(obj) is int:
            self.save_int(obj)
        elif type(obj) is float:
            write(pickle.BINFLOAT + struct.pack(">d", obj))
        elif type(obj) is str:
            encoded = obj.encode("utf-8", "surrogatepass")
            write(pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded)
        elif type(obj) is tuple:
            self.save_tuple(obj)
        elif isinstance(obj, list):
            write(pickle.EMPTY_LIST)
            if obj:
                write(pickle.MARK)
                for item in obj:
                    self.save(item)
                write(pickle.APPENDS)
        elif isinstance(obj, dict):
            if isinstance(obj, collections.OrderedDict):
                self.save_global("collections", "OrderedDict")
                write(pickle.EMPTY_TUPLE + pickle.REDUCE)
            else:
                write(pickle.EMPTY_DICT)
            if obj:
                write(pickle.MARK)
                for key, value in obj.items():
                    self.save(key)
                    self.save(value)
                write(pickle.SETITEMS)
        elif isinstance(obj, np.ndarray):
            self.save_array(obj)
        else:
            raise TypeError(f"save_torch_file cannot write a {type(obj).__name__} ({obj!r:.80})")

    def save_int(self, value: int) -> None:
        if 0 <= value < 0x100:
            self.out.write(pickle.BININT1 + bytes([value]))
        elif 0 <= value < 0x10000:
            self.out.write(pickle.BININT2 + struct.pack("<H", value))
        elif -0x80000000 <= value < 0x80000000:
            self.out.write(pickle.BININT + struct.pack("<i", value))
        else:
            encoded = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
            if len(encoded) < 0x100:
                self.out.write(pickle.LONG1 + bytes([len(encoded)]) + encoded)
            else:
                self.out.write(pickle.LONG4 + struct.pack("<i", len(encoded)) + encoded)

    def save_tuple(self, items: tuple) -> None:
        if not items:
            self.out.write(pickle.EMPTY_TUPLE)
            return
        short = {1: pickle.TUPLE1, 2: pickle.TUPLE2, 3: pickle.TUPLE3}.get(len(items))
        if short is None:
            self.out.write(pickle.MARK)
        for item in items:
            self.save(item)
        self.out.write(short or pickle.TUPLE)

    def save_global(self, module: str, name: str) -> None:
        self.out.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))

    def save_array(self, array: np.ndarray) -> None:
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        dtype = array.dtype
        if dtype not in _STORAGE_NAMES and dtype not in _UNTYPED_DTYPE_NAMES:
            raise TypeError(f"save_torch_file cannot write arrays of dtype {dtype}")
        root, offset, strides = self.storage_view(array)
        key = self.storages.setdefault(id(root), (str(len(self.storages)), root))[0]
        typed = dtype in _STORAGE_NAMES
        self.save_global("torch._utils", "_rebuild_tensor_v2" if typed else "_rebuild_tensor_v3")
        self.out.write(pickle.MARK)
        # The persistent id, exactly as torch.serialization writes it.
        self.out.write(pickle.MARK)
        self.save("storage")
        if typed:
            self.save_global("torch", _STORAGE_NAMES[dtype])
        else:
            self.save_global("torch.storage", "UntypedStorage")
        self.save(key)
        self.save("cpu")
        self.save(root.size if typed else root.nbytes)
        self.out.write(pickle.TUPLE + pickle.BINPERSID)
        self.save(offset)
        self.save_tuple(tuple(int(n) for n in array.shape))
        self.save_tuple(strides)
        self.save(False)  # requires_grad
        self.save(collections.OrderedDict())  # backward_hooks
        if not typed:
            self.save_global("torch", _UNTYPED_DTYPE_NAMES[dtype])
        self.out.write(pickle.TUPLE + pickle.REDUCE)

    @staticmethod
    def storage_view(array: np.ndarray) -> tuple[np.ndarray, int, tuple[int, ...]]:
        """(storage array, element offset, element strides) for ``array``: the C-contiguous array
        it is a view of where torch can express that view (so shared weights stay shared), else a
        contiguous copy of it."""
        root = array
        while isinstance(root.base, np.ndarray):
            root = root.base
        itemsize = array.dtype.itemsize
        start = array.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        if (
            array.size > 0
            and root.dtype == array.dtype
            and root.flags.c_contiguous
            and start >= 0
            and start % itemsize == 0
            and all(s >= 0 and s % itemsize == 0 for s in array.strides)
        ):
            return root, start // itemsize, tuple(s // itemsize for s in array.strides)
        root = array.copy(order="C")
        return root, 0, tuple(s // itemsize for s in root.strides)


def save_torch_file(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` in torch.save's zip format so that ``torch.load`` (also with
    ``weights_only=True``) and :func:`load_torch_file` read it back.

    For test fixtures (e.g. Lightning-style ``.ckpt`` dicts) and weight export, not a full
    ``torch.save``: ``obj`` may only nest dicts (OrderedDicts stay OrderedDicts), lists, tuples,
    ints, floats, bools, strings, None and numpy arrays, which become CPU tensors without
    gradients. Arrays that are views of one C-contiguous array share its storage, as torch views
    do; other arrays are stored as contiguous copies. Shared containers are written once per
    reference, and cyclic ones cannot be written.
    """
    writer = _PickleWriter()
    data = writer.dump(obj)
    records = [
        ("data.pkl", data),
        (".format_version", b"1"),
        (".storage_alignment", str(_ALIGNMENT).encode()),
        ("byteorder", b"little"),
        *((f"data/{key}", root.tobytes()) for key, root in writer.storages.values()),
        ("version", b"3\n"),
    ]
    with open(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
        for name, payload in records:
            info = zipfile.ZipInfo(f"archive/{name}")
            # Pad the local header's extra field ("FB" block, as torch does) so the data starts
            # on an aligned offset, which torch's mmap loading expects.
            data_start = fh.tell() + 30 + len(info.filename.encode()) + 4
            padding = -data_start % _ALIGNMENT
            info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
            zf.writestr(info, payload)
