"""Reading data prepared by ``python -m medfusion_jax.data.prepare`` (TFDS array_record files).

Prepared data lives in ``OUT/<tfds_name>/<config>/<version>/`` where ``<config>`` is
``<size>px-<channels>ch-<encoding>`` (see :mod:`medfusion_jax.data.tfds_builders`). It is read
with ``tfds.builder_from_directory(...).as_data_source(split)``, a random-access source that needs
neither TensorFlow nor the builder code, and that Grain samples directly.

* :func:`find` locates prepared data for a data set below a directory (``OUT``, or any of the
  nested levels down to the version folder).
* :class:`PreparedSource` adapts the TFDS source to :class:`~medfusion_jax.data.source.ImageSource`
  (1-channel storage is replicated to 3 channels on read, 3 -> 1 uses ITU-R 601 luma).
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from medfusion_jax.data.errors import DataError, ImageError
from medfusion_jax.data.source import ImageSource

if TYPE_CHECKING:
    from medfusion_jax.data.registry import DatasetInfo

#: Extra facts ``prepare`` stores next to the TFDS files (class counts, skipped files).
MEDFUSION_METADATA = "metadata.json"
_CONFIG = re.compile(r"^(\d+)px-(\d)ch-(\w+)$")


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _candidates(data_dir: str, tfds_name: str) -> list[tuple[int, str]]:
    """(image size, builder dir) of every prepared copy of ``tfds_name`` below ``data_dir``."""
    found = []
    patterns = ["", "*", "*/*", "*/*/*"]
    for pattern in patterns:
        for info_path in glob.glob(os.path.join(glob.escape(data_dir), pattern, "dataset_info.json")):
            try:
                meta = _read_json(info_path)
            except (OSError, ValueError):
                continue
            if meta.get("name") != tfds_name:
                continue
            match = _CONFIG.match(meta.get("configName", ""))
            if match:
                found.append((int(match.group(1)), os.path.dirname(info_path)))
    return sorted(set(found))


def find(data_dir: str, tfds_name: str, image_size: int | None) -> str | None:
    """The prepared builder dir for ``tfds_name`` (and ``image_size``) below ``data_dir``, if any."""
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


class PreparedSource(ImageSource):
    """An :class:`ImageSource` over one split of prepared array_record data."""

    def __init__(self, info: DatasetInfo, path: str, *, split: str, channels: int):
        self.path = path
        meta = _read_json(os.path.join(path, "dataset_info.json"))
        splits = {s["name"]: s for s in meta.get("splits", [])}
        if split not in splits:
            raise DataError(f"{path}: prepared data has no split {split!r} (has {sorted(splits)})")
        config = _CONFIG.match(meta.get("configName", ""))
        if config is None:
            raise DataError(f"{path}: not written by medfusion_jax.data.prepare (config {meta.get('configName')!r})")
        self.stored_channels = int(config.group(2))
        super().__init__(info, split=split, image_size=int(config.group(1)), channels=channels)
        extra_path = os.path.join(path, MEDFUSION_METADATA)
        self.metadata = _read_json(extra_path) if os.path.isfile(extra_path) else {}
        self._source = None
        self._length = len(self._data())

    def _data(self):
        if self._source is None:
            import tensorflow_datasets as tfds

            builder = tfds.builder_from_directory(self.path)
            self._source = builder.as_data_source(split=self.split)
        return self._source

    def __getstate__(self) -> dict[str, Any]:
        # The TFDS source holds open file readers; worker processes reopen their own.
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            example = self._data()[int(index)]
        except (OSError, ValueError) as e:
            raise ImageError(f"{self.path}[{self.split}][{index}]", f"cannot read prepared record ({e})") from None
        image = np.asarray(example["image"])
        if image.ndim == 2:
            image = image[:, :, None]
        if self.channels == 3 and image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        elif self.channels == 1 and image.shape[2] == 3:
            image = np.round(image.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))
            image = image.astype(np.uint8)[:, :, None]
        return {"image": image, "label": int(example["label"])}

    def class_counts(self) -> dict[str, int]:
        counts = self.metadata.get("class_counts", {}).get(self.split)
        if counts is None:
            labels = np.asarray([self._data()[i]["label"] for i in range(len(self))], np.int64)
            n = np.bincount(labels, minlength=len(self.class_names))
            counts = {name: int(c) for name, c in zip(self.class_names, n, strict=True)}
        return dict(counts)

    def describe_item(self, index: int) -> str:
        example = self._data()[int(index)]
        key = example.get("id", b"")
        return key.decode() if isinstance(key, bytes) else str(key)
