"""Prepared data: the on-disk format that ``python -m medfusion_jax.data.prepare`` writes, and reading it.

A prepared copy lives in ``OUT/<name>/<config>/2.0.0/`` (``<name>`` the registry's ``tfds_name``, e.g.
``medfusion_airogs``; ``<config>`` is ``<size>px-<channels>ch-<encoding>``) and holds:

* ``<name>-<split>.array_record-<k>``: the records of each split, written with the ``array_record``
  package uncompressed, one record per chunk (``group_size:1``), so that reading one image is one
  seek and a copy, not a decompression (raw pixels are by far the largest cost otherwise);
* ``prepared.json``, written last and atomically (it marks the copy complete): the format version,
  data set, image size, stored channels, encoding, class names, the files and example count of each
  split, and what preparation counted (class counts, skipped images, index problems).

One record is ``<int32 label><uint32 n><n bytes of id (UTF-8)><image>`` (little-endian), the image
being ``image_size * image_size * channels`` uint8 bytes (``raw``) or a PNG/JPEG file. Records are
read through Grain's ``ArrayRecordDataSource``.

Copies prepared before 2026-12-07 (version ``1.0.0``: TFDS's ``dataset_info.json``) are still read,
through ``tfds.builder_from_directory(...).as_data_source`` (TensorFlow is not needed).

* :func:`find` locates a prepared copy of a data set below a directory (``OUT``, or any of the nested
  levels down to the version folder).
* :class:`PreparedSource` is an :class:`~medfusion_jax.data.source.ImageSource` over one split
  (1-channel storage is replicated to 3 channels on read, 3 -> 1 uses ITU-R 601 luma).
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import struct
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from medfusion_jax.data.errors import DataError, ImageError
from medfusion_jax.data.source import ImageSource

if TYPE_CHECKING:
    from medfusion_jax.data.registry import DatasetInfo

#: The file that describes (and completes) a prepared copy.
PREPARED_JSON = "prepared.json"
FORMAT = "medfusion-jax prepared data"
FORMAT_VERSION = 2
VERSION_FOLDER = "2.0.0"
ENCODINGS = ("raw", "png", "jpeg")
#: What a TFDS-era copy (version 1.0.0) stores next to TFDS's files (class counts, skipped files).
TFDS_METADATA = "metadata.json"
_CONFIG = re.compile(r"^(\d+)px-(\d)ch-(\w+)$")
_HEADER = struct.Struct("<iI")


def config_name(image_size: int, channels: int, encoding: str) -> str:
    return f"{image_size}px-{channels}ch-{encoding}"


def encode_record(label: int, key: str, image: bytes) -> bytes:
    """One record: label, id and the image bytes (raw pixels or a PNG/JPEG file)."""
    key_bytes = key.encode("utf-8")
    return _HEADER.pack(int(label), len(key_bytes)) + key_bytes + image


def decode_record(record: bytes) -> tuple[int, str, memoryview]:
    """(label, id, image bytes) of a record written by :func:`encode_record`."""
    label, n = _HEADER.unpack_from(record)
    start = _HEADER.size
    view = memoryview(record)
    return label, bytes(view[start : start + n]).decode("utf-8"), view[start + n :]


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _describe(folder: str) -> dict | None:
    """The facts of the prepared copy in ``folder`` (either version), or None if it holds none."""
    path = os.path.join(folder, PREPARED_JSON)
    if os.path.isfile(path):
        try:
            meta = _read_json(path)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable prepared-data description ({e}); prepare the data again") from None
        if meta.get("format") != FORMAT or not isinstance(meta.get("splits"), dict):
            raise DataError(f"{path}: not written by python -m medfusion_jax.data.prepare")
        return meta
    path = os.path.join(folder, "dataset_info.json")
    if os.path.isfile(path):  # a TFDS-era copy
        try:
            meta = _read_json(path)
        except (OSError, ValueError):
            return None
        match = _CONFIG.match(meta.get("configName", ""))
        if match is None:
            return None
        extra_path = os.path.join(folder, TFDS_METADATA)
        extra = _read_json(extra_path) if os.path.isfile(extra_path) else {}
        return {
            **extra,
            "format": "tfds",
            "name": meta.get("name"),
            "image_size": int(match.group(1)),
            "channels": int(match.group(2)),
            "encoding": match.group(3),
            "splits": {s["name"]: {} for s in meta.get("splits", [])},
        }
    return None


def _candidates(data_dir: str, tfds_name: str) -> list[tuple[int, str]]:
    """(image size, version folder) of every prepared copy of ``tfds_name`` below ``data_dir``."""
    found = []
    for pattern in ["", "*", "*/*", "*/*/*"]:
        for marker in (PREPARED_JSON, "dataset_info.json"):
            for path in glob.glob(os.path.join(glob.escape(data_dir), pattern, marker)):
                folder = os.path.dirname(path)
                try:
                    meta = _describe(folder)
                except DataError:
                    continue
                if meta is not None and meta.get("name") == tfds_name:
                    found.append((int(meta["image_size"]), folder))
    return sorted(set(found))


def find(data_dir: str, tfds_name: str, image_size: int | None) -> str | None:
    """The prepared copy of ``tfds_name`` (at ``image_size``) below ``data_dir``, if any.

    Where a data set was prepared in both formats, the newer (``2.0.0`` sorts after ``1.0.0``) wins.
    """
    if not os.path.isdir(data_dir):
        return None
    found = _candidates(data_dir, tfds_name)
    if not found:
        return None
    sizes = sorted({size for size, _ in found})
    if image_size is None:
        if len(sizes) > 1:
            raise DataError(
                f"{data_dir}: prepared {tfds_name} data at several sizes {sizes}; pass image_size"
            )
        return found[-1][1]
    matching = [path for size, path in found if size == image_size]
    if not matching:
        raise DataError(
            f"{data_dir}: prepared {tfds_name} data exists at size(s) {sizes}, not {image_size}; "
            f"prepare it with --image-size {image_size}"
        )
    return matching[-1]


def read_metadata(path: str) -> dict:
    """What preparation recorded for the copy in ``path``: class counts, skipped images, index problems."""
    meta = _describe(path)
    if meta is None:
        raise DataError(f"{path}: no prepared data here (no {PREPARED_JSON})")
    return _recorded(meta)


def _recorded(meta: dict) -> dict:
    return {key: meta.get(key, {}) for key in ("class_counts", "skipped", "problems")}


class PreparedSource(ImageSource):
    """An :class:`ImageSource` over one split of a prepared copy (either version)."""

    def __init__(self, info: DatasetInfo, path: str, *, split: str, channels: int):
        self.path = path
        meta = _describe(path)
        if meta is None:
            raise DataError(f"{path}: not written by python -m medfusion_jax.data.prepare")
        if split not in meta["splits"]:
            raise DataError(f"{path}: prepared data has no split {split!r} (has {sorted(meta['splits'])})")
        if meta["encoding"] not in ENCODINGS:
            raise DataError(f"{path}: unknown encoding {meta['encoding']!r} (known: {', '.join(ENCODINGS)})")
        self.stored_channels = int(meta["channels"])
        self.encoding = meta["encoding"]
        self.tfds = meta["format"] == "tfds"
        super().__init__(info, split=split, image_size=int(meta["image_size"]), channels=channels)
        self.metadata = _recorded(meta)
        self._files = [os.path.join(path, f) for f in meta["splits"][split].get("files", [])]
        for file in self._files:
            if not os.path.isfile(file):
                raise DataError(f"{file}: missing; the prepared copy in {path} is incomplete, prepare it again")
        self._source = None
        self._length = len(self._data())
        expected = meta["splits"][split].get("num_examples")
        if expected is not None and expected != self._length:
            raise DataError(f"{path}: split {split!r} holds {self._length} records, {PREPARED_JSON} says {expected}")

    def _data(self):
        if self._source is None:
            if self.tfds:
                import tensorflow_datasets as tfds

                self._source = tfds.builder_from_directory(self.path).as_data_source(split=self.split)
            elif not self._files:  # a split whose every image was skipped
                self._source = []
            else:
                import grain

                self._source = grain.sources.ArrayRecordDataSource(self._files)
        return self._source

    def __getstate__(self) -> dict[str, Any]:
        # The record readers hold open files; worker processes reopen their own.
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __len__(self) -> int:
        return self._length

    def _read(self, index: int) -> tuple[np.ndarray, int, str]:
        where = f"{self.path}[{self.split}][{index}]"
        try:
            record = self._data()[int(index)]
        except (OSError, ValueError, RuntimeError) as e:
            raise ImageError(where, f"cannot read prepared record ({e})") from None
        if self.tfds:
            key = record.get("id", b"")
            return np.asarray(record["image"]), int(record["label"]), key.decode() if isinstance(key, bytes) else key
        try:
            label, key, payload = decode_record(record)
            if self.encoding == "raw":
                shape = (self.image_size, self.image_size, self.stored_channels)
                image = np.frombuffer(payload, np.uint8).reshape(shape)
            else:
                image = np.asarray(Image.open(io.BytesIO(payload)))
        except (ValueError, OSError, struct.error) as e:
            raise ImageError(where, f"corrupt prepared record ({e})") from None
        return image, label, key

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label, _ = self._read(index)
        if image.ndim == 2:
            image = image[:, :, None]
        if self.channels == 3 and image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        elif self.channels == 1 and image.shape[2] == 3:
            image = np.round(image.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))
            image = image.astype(np.uint8)[:, :, None]
        return {"image": image, "label": label}

    def class_counts(self) -> dict[str, int]:
        counts = self.metadata.get("class_counts", {}).get(self.split)
        if counts is None:
            labels = np.asarray([self._read(i)[1] for i in range(len(self))], np.int64)
            n = np.bincount(labels, minlength=len(self.class_names))
            counts = {name: int(c) for name, c in zip(self.class_names, n, strict=True)}
        return dict(counts)

    def describe_item(self, index: int) -> str:
        return self._read(index)[2]
