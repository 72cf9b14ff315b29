"""Random-access image sources (Grain ``RandomAccessDataSource`` protocol).

Every data set, whether read from the user's files, from prepared array_record files or generated
procedurally, is an :class:`ImageSource`: ``len(source)`` and ``source[i]`` ->
``{"image": uint8 [H, W, C], "label": int}``, plus the facts the rest of the code needs:

* ``info``: the registry entry (:class:`~medfusion_jax.data.registry.DatasetInfo`);
* ``class_names``, ``image_size``, ``channels``, ``split``;
* ``measure``: the modality's feature measurement (image -> float) or ``None``; ``threshold``: the
  fixed threshold above which the measurement says class ``measure_positive_class``;
* ``problems``: non-fatal findings of the index scan (:class:`~medfusion_jax.data.errors.Problem`);
* ``class_counts()``: images per class;
* ``describe_item(i)``: the file (or id) behind item ``i``, for error messages.

``source[i]`` raises :class:`~medfusion_jax.data.errors.ImageError` for an unreadable image; the
pipeline decides whether to skip it or stop.

Sources are plain picklable objects (lists of paths, numpy arrays) so that Grain can send them to
worker processes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medfusion_jax.data import images
from medfusion_jax.data.errors import DataError, Problem, require_dir

if TYPE_CHECKING:
    from medfusion_jax.data.registry import DatasetInfo


@dataclasses.dataclass(frozen=True)
class Record:
    """One image file of an index: its path, class index and a stable key (id or relative path)."""

    path: str
    label: int
    key: str


class ImageSource:
    """Base class: the common attributes of all sources (see the module docstring)."""

    def __init__(self, info: DatasetInfo, *, split: str, image_size: int, channels: int):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.info = info
        self.split = split
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.problems: list[Problem] = []

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def measure(self) -> Callable[[np.ndarray], float] | None:
        return self.info.measure

    @property
    def threshold(self) -> float | None:
        return self.info.threshold

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def class_counts(self) -> dict[str, int]:
        raise NotImplementedError

    def describe_item(self, index: int) -> str:
        return f"{self.info.name}[{index}]"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.info.name!r}, split={self.split!r}, n={len(self)}, "
            f"size={self.image_size}, channels={self.channels})"
        )


class RecordSource(ImageSource):
    """Items of the user's files listed by an index of :class:`Record` (paths, labels, class names and the
    problems of the scan); subclasses read one item (:class:`FileSource` an image, volumes a volume)."""

    def __init__(
        self,
        info: DatasetInfo,
        records: Sequence[Record],
        *,
        split: str,
        image_size: int,
        channels: int,
        class_names: Sequence[str] | None = None,
        problems: Sequence[Problem] = (),
        root: str = "",
    ):
        super().__init__(info, split=split, image_size=image_size, channels=channels)
        self._class_names = tuple(class_names) if class_names is not None else info.class_names
        self.paths = [r.path for r in records]
        self.keys = [r.key for r in records]
        self.labels = np.asarray([r.label for r in records], np.int32)
        self.problems = list(problems)
        self.root = root

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts, strict=True)}

    def describe_item(self, index: int) -> str:
        return self.paths[index]


class FileSource(RecordSource):
    """Images read from the user's files through an index of :class:`Record`.

    ``geometry`` is the reference's resize/crop (see :func:`medfusion_jax.data.images.fit`).
    """

    def __init__(
        self,
        info: DatasetInfo,
        records: Sequence[Record],
        *,
        split: str,
        image_size: int,
        channels: int,
        geometry: images.Geometry,
        allow_upscale: bool = False,
        class_names: Sequence[str] | None = None,
        problems: Sequence[Problem] = (),
        root: str = "",
    ):
        super().__init__(info, records, split=split, image_size=image_size, channels=channels,
                         class_names=class_names, problems=problems, root=root)
        self.geometry = geometry
        self.allow_upscale = allow_upscale

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = images.load_image(
            self.paths[index],
            image_size=self.image_size,
            channels=self.channels,
            geometry=self.geometry,
            allow_upscale=self.allow_upscale,
        )
        return {"image": image, "label": int(self.labels[index])}


def walk_images(root: str) -> list[str]:
    """All image files below ``root``, sorted; symlinked folders are followed, each once."""
    found = []
    visited = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink cycle, or two links to one folder
            dirnames[:] = []
            continue
        visited.add(real)
        # Hidden entries are OS metadata (.DS_Store, ._ AppleDouble files), never images.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if images.is_image_file(path):
                found.append(path)
    return found


def finish_index(
    name: str, root: str, records: list[Record], problems: list[Problem], strict: bool
) -> None:
    """Raises if nothing is left, or (``strict``) if any problem was found."""
    errors = [p for p in problems if p.severity == "error"]
    if strict and errors:
        listing = "\n  ".join(str(p) for p in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DataError(f"{root}: {len(errors)} problem(s) in the {name} data:\n  {listing}{more}")
    if not records:
        first = f" (first problem: {errors[0]})" if errors else ""
        raise DataError(f"{root}: no usable images for {name}{first}")


def open_file_source(
    info,
    data_dir: str | None,
    index,
    *,
    geometry: str,
    splits: tuple[str, ...] | None = None,
    split: str = "train",
    image_size: int | None = None,
    channels: int = 3,
    strict: bool = False,
    allow_upscale: bool = False,
) -> FileSource:
    """How every reader of the user's files opens a split: check the folder and the split name, index the
    files, refuse an empty index (or, with ``strict``, any problem) naming the folder, and serve the
    records as a :class:`FileSource`.

    ``index(data_dir, split)`` returns ``(records, problems, root, class_names)``; ``class_names`` None
    keeps the data set's own. ``geometry`` is the reference's resize/crop for this data set;
    ``splits`` the split names it accepts (None: any, the index decides).
    """
    data_dir = require_dir(data_dir, info.name)
    if splits is not None and split not in splits:
        raise DataError(f"{data_dir}: {info.name} has the split(s) {', '.join(map(repr, splits))} (got {split!r})")
    records, problems, root, class_names = index(data_dir, split)
    finish_index(info.name, root, records, problems, strict)
    extra = {} if class_names is None else {"class_names": class_names}
    return FileSource(info, records, split=split, image_size=image_size or info.image_size, channels=channels,
                      geometry=geometry, allow_upscale=allow_upscale, problems=problems, root=root, **extra)
