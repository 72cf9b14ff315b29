"""Read PyTorch checkpoint files without torch.

``torch.save`` (torch >= 1.6) and ``torch.jit.save`` both write a zip archive::

    <name>/data.pkl        the pickled object; tensors refer to their storages by persistent id
    <name>/data/<key>      one raw, uncompressed storage blob per key
    <name>/byteorder       "little" or "big" (absent in old files: read as little-endian)
    <name>/version         format version
    <name>/code/...        TorchScript only: the module's compiled source
    <name>/constants.pkl   TorchScript only: tensor constants of the code (not read here)

:func:`load_torch_file` reads ``.pt``/``.pth``/PyTorch-Lightning ``.ckpt`` files and TorchScript
archives into plain Python values and numpy arrays. The pickle is decoded by a restricted
unpickler: nothing named in the file is imported or run except the small set of tensor-rebuild and
container functions this module re-implements. Any other class or function the file merely names
(Lightning stores ``optimizer=torch.optim.AdamW`` in ``hyper_parameters``, Medfusion stores its
``UNet`` class there) becomes an inert :class:`GlobalRef`; a file that tries to *call* or
*instantiate* such a name is refused with :class:`TorchFileError`.

The minimal writer of the same format that the tests use to make fixtures is ``tests/torch_writer.py``
(it is not part of the library: nothing at run time writes torch files).
"""

from __future__ import annotations

import ast
import collections
import io
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "GlobalRef",
    "TorchFileError",
    "TorchScriptObject",
    "load_torch_file",
    "torchscript_state_dict",
]


class TorchFileError(ValueError):
    """A file could not be read as a PyTorch checkpoint; the message names the file and the reason."""


class _GlobalRefMeta(type):
    """Metaclass of :class:`GlobalRef` stand-ins: a readable repr, and no attribute can be set on
    them, so a hostile pickle cannot re-purpose a stand-in through BUILD."""

    def __repr__(cls) -> str:
        return f"<pickled global {cls.qualified_name}>"

    def __setattr__(cls, name: str, value: Any) -> None:
        raise _Refused(cls.qualified_name)


class GlobalRef(metaclass=_GlobalRefMeta):
    """Stand-in for a class or function that a checkpoint names but that is never imported or run.

    Each such name gets its own subclass, whose ``qualified_name`` is the dotted name the file
    used, e.g. ``hparams["optimizer"].qualified_name == "torch.optim.adamw.AdamW"``. Calling or
    instantiating it (which is what a pickle would do to build an object of that class) raises.
    """

    qualified_name = "GlobalRef"

    def __new__(cls, *args: Any, **kwargs: Any) -> GlobalRef:
        raise _Refused(cls.qualified_name)


class _Refused(TypeError):
    """Raised when a :class:`GlobalRef` is called or modified; inside the unpickler this means the
    file uses a global outside the allow-list, which :func:`load_torch_file` reports as a
    :class:`TorchFileError` that names the file."""

    def __init__(self, qualified_name: str) -> None:
        super().__init__(f"{qualified_name} is only a name read from a checkpoint; it cannot be called or changed")
        self.qualified_name = qualified_name


class TorchScriptObject:
    """An object of a TorchScript class (``__torch__.*``) from a ``torch.jit.save`` archive.

    ``type_name`` is the class's qualified name, ``state`` what the archive pickled for the object:
    for a module, a dict of every attribute (parameters, buffers, submodules, plain settings such as
    ``training``). Attributes of a dict state can also be read as Python attributes
    (``obj.net.layers``). ``parameter_names`` and ``buffer_names`` are the class's declared
    ``__parameters__``/``__buffers__`` from the archive's ``code/`` folder, or None where the
    archive has no such declaration for the class.
    """

    type_name = "__torch__"
    parameter_names: tuple[str, ...] | None = None
    buffer_names: tuple[str, ...] | None = None
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not real attributes; vars() avoids recursing before BUILD.
        state = vars(self).get("state")
        if isinstance(state, dict) and name in state:
            return state[name]
        raise AttributeError(f"{self.type_name} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<TorchScript {self.type_name}>"


class _ConfigDict(dict):
    """An ``argparse.Namespace`` or an omegaconf ``DictConfig`` from ``hyper_parameters``, read as a dict."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        # omegaconf pickles its nodes under "_content" (None/str for null, missing or interpolated
        # configs); a Namespace pickles its attribute dict directly.
        content = state["_content"] if "_metadata" in state and "_content" in state else state
        if isinstance(content, dict):
            self.update((key, _config_value(value)) for key, value in content.items())


class _ConfigList(list):
    """An omegaconf ``ListConfig`` from ``hyper_parameters``, read as a list."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        content = state.get("_content")
        if isinstance(content, list):
            self.extend(_config_value(value) for value in content)


class _ConfigNode:
    """An omegaconf value node or metadata record; only a value node's ``_val`` is kept."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.value = state.get("_val") if isinstance(state, dict) else None


def _config_value(value: Any) -> Any:
    return value.value if isinstance(value, _ConfigNode) else value


class _StorageType:
    """A ``torch.<X>Storage`` global as it appears in a storage's persistent id."""

    def __init__(self, qualified_name: str, dtype: np.dtype | None) -> None:
        self.qualified_name = qualified_name
        self.dtype = dtype  # None: an untyped (byte) storage whose tensors carry their own dtype


class _Storage:
    """One storage blob of the archive, as raw little- or big-endian bytes."""

    def __init__(self, name: str, raw: bytes, dtype: np.dtype | None) -> None:
        self.name = name
        self.raw = raw
        self.dtype = dtype


# Legacy typed-storage classes of torch, in the persistent ids that torch.save writes.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
}

# torch dtype globals (``torch.float32`` pickles as the global ``torch float32``): they name the
# dtype of tensors on untyped storages (_rebuild_tensor_v3) and appear as hyper-parameter values.
TORCH_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint64": np.dtype(np.uint64),
    "uint32": np.dtype(np.uint32),
    "uint16": np.dtype(np.uint16),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
}

# pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2): torch's magic number, the first of the pickles
# that make up a pre-1.6 (non-zip) torch.save file.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def _rebuild_parameter(data: np.ndarray, requires_grad: bool, backward_hooks: Any) -> np.ndarray:
    return data


def _rebuild_parameter_with_state(
    data: np.ndarray, requires_grad: bool, backward_hooks: Any, state: Any
) -> np.ndarray:
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    # torch wraps tensor subclasses and tensors with Python attributes this way; the array is
    # what func(*args) rebuilds, the subclass and its attributes are dropped.
    return func(*args)


def _device(kind: str, index: int | None = None) -> str:
    return kind if index is None else f"{kind}:{index}"


def _restore_type_tag(value: Any, type_str: str) -> Any:
    return value


def _latin1_encode(text: str, encoding: str) -> bytes:
    # Protocol-2 pickles encode bytes objects as _codecs.encode(text, "latin1"); only that use is allowed.
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _numpy_reconstructors() -> dict[str, Any]:
    # Arrays and scalars pickle through numpy's reconstructor functions, which moved from
    # numpy.core to numpy._core in numpy 2; files name either module.
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    table: dict[str, Any] = {"numpy.dtype": np.dtype, "numpy.ndarray": np.ndarray}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[f"{module}._reconstruct"] = reconstruct
        table[f"{module}.scalar"] = scalar
    return table


_LIGHTNING_ATTRIBUTE_DICTS = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
)

# Globals a file may call, by qualified name, beside the tensor rebuilders bound per archive.
_SAFE_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "collections.defaultdict": collections.defaultdict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.complex": complex,
    "builtins.dict": dict,
    "builtins.list": list,
    "builtins.tuple": tuple,
    "builtins.int": int,
    "builtins.float": float,
    "builtins.str": str,
    "builtins.bool": bool,
    "builtins.bytes": bytes,
    "builtins.bytearray": bytearray,
    "_codecs.encode": _latin1_encode,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.Size": tuple,
    "torch.device": _device,
    "torch.jit._pickle.build_intlist": list,
    "torch.jit._pickle.build_doublelist": list,
    "torch.jit._pickle.build_boollist": list,
    "torch.jit._pickle.build_tensorlist": list,
    "torch.jit._pickle.restore_type_tag": _restore_type_tag,
    "argparse.Namespace": _ConfigDict,
    "omegaconf.dictconfig.DictConfig": _ConfigDict,
    "omegaconf.listconfig.ListConfig": _ConfigList,
    "omegaconf.base.Metadata": _ConfigNode,
    "omegaconf.base.ContainerMetadata": _ConfigNode,
    **{name: dict for name in _LIGHTNING_ATTRIBUTE_DICTS},
    **_numpy_reconstructors(),
}

# Python 2 names that protocol-2 pickles use for builtins.
_PY2_BUILTINS = {"long": "int", "unicode": "str"}


def _declared_members(source: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """``{class name: (__parameters__, __buffers__)}`` for every class of a TorchScript code file."""
    declared: dict[str, dict[str, tuple[str, ...]]] = {}
    current: dict[str, tuple[str, ...]] | None = None
    for line in source.splitlines():
        if line.startswith("class "):
            current = declared.setdefault(line[6:].split("(")[0].split(":")[0].strip(), {})
        elif current is not None and line.startswith(("  __parameters__ = ", "  __buffers__ = ")):
            key, _, value = line.strip().partition(" = ")
            try:
                current[key] = tuple(ast.literal_eval(value))
            except (ValueError, SyntaxError, TypeError):
                continue
    return {
        name: (members["__parameters__"], members["__buffers__"])
        for name, members in declared.items()
        if "__parameters__" in members and "__buffers__" in members
    }


def _byteswapped(array: np.ndarray) -> np.ndarray:
    """``array`` (owned, contiguous) with the bytes of every scalar component reversed in place."""
    width = array.dtype.itemsize // (2 if array.dtype.kind == "c" else 1)
    if width > 1:
        array.view(np.dtype(f"u{width}")).byteswap(inplace=True)
    return array


class _Archive:
    """An open torch zip archive: its records, storages and TorchScript code, read on demand."""

    def __init__(self, path: str, zf: zipfile.ZipFile) -> None:
        self.path = path
        self.zf = zf
        names = zf.namelist()
        # torch names every record "<archive name>/..." and takes the archive name from the first.
        self.prefix = names[0].split("/", 1)[0] if names and "/" in names[0] else ""
        self.names = set(names)
        if not self.prefix or f"{self.prefix}/data.pkl" not in self.names:
            raise TorchFileError(
                f"{path} is a zip archive but not a PyTorch checkpoint: it has no <name>/data.pkl record"
            )
        self.storages: dict[str, _Storage] = {}
        self.code: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
        byteorder = self.record("byteorder").strip() if self.has("byteorder") else b"little"
        if byteorder not in (b"little", b"big"):
            raise TorchFileError(f"{path} is truncated or corrupt: unknown byteorder {byteorder!r}")
        self.big_endian = byteorder == b"big"

    def has(self, name: str) -> bool:
        return f"{self.prefix}/{name}" in self.names

    def record(self, name: str) -> bytes:
        try:
            return self.zf.read(f"{self.prefix}/{name}")
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise TorchFileError(f"{self.path} is truncated or corrupt: cannot read record {name!r} ({exc})") from exc

    def storage(self, key: str, storage_type: _StorageType, numel: int) -> _Storage:
        name = f"data/{key}"
        cached = self.storages.get(name)
        if cached is not None:
            return cached
        if not self.has(name):
            raise TorchFileError(f"{self.path} references storage {name!r} which is missing from the archive")
        raw = self.record(name)
        needed = numel * (storage_type.dtype.itemsize if storage_type.dtype is not None else 1)
        if len(raw) < needed:
            raise TorchFileError(
                f"{self.path} is truncated or corrupt: storage {name!r} holds {len(raw)} bytes, {needed} expected"
            )
        self.storages[name] = _Storage(name, raw[:needed], storage_type.dtype)
        return self.storages[name]

    def declared_members(self, module: str, name: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        # Class __torch__.a.b.C is defined in code/__torch__/a/b.py.
        record = "code/" + module.replace(".", "/") + ".py"
        if record not in self.code:
            source = self.record(record).decode("utf-8", "replace") if self.has(record) else ""
            self.code[record] = _declared_members(source)
        return self.code[record].get(name)


class _Unpickler(pickle.Unpickler):
    """Decodes one pickle of an archive with an allow-list of globals (see the module docstring)."""

    def __init__(self, data: bytes, archive: _Archive) -> None:
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.stand_ins: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":
            module, name = "builtins", _PY2_BUILTINS.get(name, name)
        qualified = f"{module}.{name}"
        if qualified in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[qualified]
        if qualified == "torch._utils._rebuild_tensor_v2":
            return self.rebuild_tensor_v2
        if qualified == "torch._utils._rebuild_tensor_v3":
            return self.rebuild_tensor_v3
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(qualified, STORAGE_DTYPES[name])
        if qualified in ("torch.UntypedStorage", "torch.storage.UntypedStorage"):
            return _StorageType(qualified, None)
        if module == "torch" and name in TORCH_DTYPES:
            return TORCH_DTYPES[name]
        if module.startswith("omegaconf.nodes"):
            return _ConfigNode
        if module == "__torch__" or module.startswith("__torch__."):
            return self.stand_in(qualified, TorchScriptObject, module, name)
        return self.stand_in(qualified, GlobalRef)

    def stand_in(self, qualified: str, base: type, module: str = "", name: str = "") -> type:
        """The class standing for ``qualified`` in this file, made once so that identity holds."""
        cls = self.stand_ins.get(qualified)
        if cls is None:
            if base is TorchScriptObject:
                attributes: dict[str, Any] = {"type_name": qualified}
                declared = self.archive.declared_members(module, name)
                if declared is not None:
                    attributes["parameter_names"], attributes["buffer_names"] = declared
            else:
                attributes = {"qualified_name": qualified}
            cls = self.stand_ins[qualified] = type(qualified.rsplit(".", 1)[-1], (base,), attributes)
        return cls

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchFileError(f"{self.archive.path} is truncated or corrupt: unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            name = getattr(storage_type, "qualified_name", repr(storage_type))
            raise TorchFileError(f"{self.archive.path} uses an unsupported storage type {name!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise TorchFileError(f"{self.archive.path} is truncated or corrupt: bad storage id {pid!r}")
        return self.archive.storage(key, storage_type, numel)

    def rebuild_tensor_v2(
        self, storage: _Storage, offset: int, size: tuple, stride: tuple, *rest: Any
    ) -> np.ndarray:
        # rest: requires_grad, backward_hooks and (torch >= 1.13) Python-side metadata, all dropped.
        if not isinstance(storage, _Storage) or storage.dtype is None:
            raise TorchFileError(f"{self.archive.path} is truncated or corrupt: tensor without a typed storage")
        return self.tensor(storage, offset, size, stride, storage.dtype)

    def rebuild_tensor_v3(
        self,
        storage: _Storage,
        offset: int,
        size: tuple,
        stride: tuple,
        requires_grad: bool,
        backward_hooks: Any,
        dtype: Any,
        *metadata: Any,
    ) -> np.ndarray:
        if not isinstance(dtype, np.dtype):
            raise TorchFileError(f"{self.archive.path} holds a tensor of unsupported dtype {dtype!r}")
        if not isinstance(storage, _Storage):
            raise TorchFileError(f"{self.archive.path} is truncated or corrupt: tensor without a storage")
        return self.tensor(storage, offset, size, stride, dtype)

    def tensor(self, storage: _Storage, offset: int, size: tuple, stride: tuple, dtype: np.dtype) -> np.ndarray:
        """The tensor that ``offset``/``size``/``stride`` (in elements) select from ``storage``,
        as an owned C-order array."""
        path = self.archive.path
        size, stride = tuple(size), tuple(stride)
        if (
            len(size) != len(stride)
            or not all(isinstance(n, int) and n >= 0 for n in (*size, *stride, offset))
            or len(storage.raw) % dtype.itemsize
        ):
            raise TorchFileError(
                f"{path} is truncated or corrupt: invalid tensor view of {storage.name!r} "
                f"(offset {offset!r}, size {size!r}, stride {stride!r}, dtype {dtype})"
            )
        flat = np.frombuffer(storage.raw, dtype=dtype)
        if 0 in size:
            return np.zeros(size, dtype=dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= flat.size:
            raise TorchFileError(
                f"{path} is truncated or corrupt: a tensor reads element {last} of storage "
                f"{storage.name!r}, which has {flat.size}"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=[s * dtype.itemsize for s in stride], writeable=False
        )
        out = np.array(view, order="C")
        return _byteswapped(out) if self.archive.big_endian else out


def _open_zip(path: str) -> zipfile.ZipFile:
    """The file as a zip archive, after telling apart every other kind of file torch cannot load."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_LEGACY_MAGIC))
    except FileNotFoundError as exc:
        raise TorchFileError(f"{path} does not exist") from exc
    except IsADirectoryError as exc:
        raise TorchFileError(f"{path} is a directory, not a PyTorch checkpoint file") from exc
    except OSError as exc:
        raise TorchFileError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if not head:
        raise TorchFileError(f"{path} is empty (0 bytes), not a PyTorch checkpoint")
    if head.startswith(b"PK"):
        try:
            return zipfile.ZipFile(path)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise TorchFileError(f"{path} is truncated or corrupt: its zip structure cannot be read ({exc})") from exc
    if head == _LEGACY_MAGIC:
        raise TorchFileError(
            f"{path} uses the legacy (pre-1.6, non-zip) torch.save format, which is not supported: "
            "re-save it with torch >= 1.6 (torch.save(torch.load(old), new))"
        )
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
        raise TorchFileError(f"{path} is a plain Python pickle, not a PyTorch checkpoint written by torch.save")
    raise TorchFileError(f"{path} is not a PyTorch checkpoint: not a zip archive and not a legacy pickle")


def load_torch_file(path: str | os.PathLike[str]) -> Any:
    """The object stored in a ``torch.save`` or ``torch.jit.save`` file, with tensors as numpy arrays.

    Tensors (and ``torch.nn.Parameter``) become owned C-order numpy arrays of the same dtype and
    shape (bfloat16 and float8 as ``ml_dtypes`` types); views of one storage each get their own
    copy. Containers keep their types (OrderedDict stays OrderedDict); ``torch.Size`` becomes a
    tuple, ``torch.device`` a string such as ``"cuda:0"``, a torch dtype a numpy dtype, an
    ``argparse.Namespace``/omegaconf ``DictConfig``/``ListConfig`` (Lightning ``hyper_parameters``)
    a dict/list subclass (omegaconf interpolations stay unresolved strings), Lightning's
    ``AttributeDict`` a dict, any other named class or function a :class:`GlobalRef`. For a
    TorchScript archive the result is the root :class:`TorchScriptObject`; see
    :func:`torchscript_state_dict`. Every failure raises :class:`TorchFileError`.
    """
    path = os.fspath(path)
    with _open_zip(path) as zf:
        archive = _Archive(path, zf)
        data = archive.record("data.pkl")
        try:
            return _Unpickler(data, archive).load()
        except TorchFileError:
            raise
        except _Refused as exc:
            raise TorchFileError(
                f"{path} uses an unsupported pickle global {exc.qualified_name!r}: only tensors, "
                "containers and plain values are read, no code named in the file is run"
            ) from exc
        # The pickle is untrusted input: whatever else breaks while decoding it means a damaged file.
        except Exception as exc:
            raise TorchFileError(
                f"{path} is truncated or corrupt: {archive.prefix}/data.pkl cannot be unpickled "
                f"({type(exc).__name__}: {exc})"
            ) from exc


def torchscript_state_dict(module: TorchScriptObject) -> dict[str, np.ndarray]:
    """The ``state_dict()`` of a loaded TorchScript module: ``{"conv.weight": array, ...}``.

    Walks the module tree as torch does: a module's declared parameters, then its buffers, then
    each submodule under ``<attribute>.``; parameters that are None (e.g. ``bias=False``) are left
    out. Where the archive declares no ``__parameters__``/``__buffers__`` for a class, every array
    attribute of its objects is taken (TorchScript pickles plain tensor attributes like buffers).
    """
    if not isinstance(module, TorchScriptObject):
        raise TypeError(f"expected a TorchScriptObject from load_torch_file, got {type(module).__name__}")
    out: dict[str, np.ndarray] = {}
    _collect_state(module, "", out)
    return out


def _collect_state(obj: TorchScriptObject, prefix: str, out: dict[str, np.ndarray]) -> None:
    state = obj.state if isinstance(obj.state, dict) else {}
    if obj.parameter_names is None or obj.buffer_names is None:
        names = [key for key, value in state.items() if isinstance(value, np.ndarray)]
    else:
        names = [*obj.parameter_names, *obj.buffer_names]
    for name in names:
        if isinstance(state.get(name), np.ndarray):
            out[prefix + name] = state[name]
    for name, value in state.items():
        if isinstance(value, TorchScriptObject):
            _collect_state(value, f"{prefix}{name}.", out)
