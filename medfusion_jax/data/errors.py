"""Errors and problem records of the data layer.

Every message names the file (or directory) it is about and what is wrong with it, so that a
user with a 100,000-image export can find the one bad file.

* :class:`DataError`: the data cannot be used at all (missing data dir, CSV without the expected
  columns, no images). Raised by :func:`medfusion_jax.data.make_dataset`.
* :class:`ImageError`: one image cannot be read (zero-byte, truncated, not an image, too small for
  the crop, unsupported DICOM). Raised by a source's ``__getitem__``; the pipeline skips and counts
  it unless ``strict``.
* :class:`Problem`: one non-fatal finding of an index scan (a CSV row whose file is missing, an
  unknown label, a duplicate id, an empty class folder). Sources keep them in ``source.problems``;
  ``describe`` prints them all.
"""

from __future__ import annotations

import dataclasses
import os


class DataError(Exception):
    """The data set cannot be used; the message names the file or directory and the fault."""


class ImageError(DataError):
    """One image cannot be read. ``path`` is the file, ``reason`` what is wrong with it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # Worker processes send exceptions back pickled; keep both fields.
        return (type(self), (self.path, self.reason))


@dataclasses.dataclass(frozen=True)
class Problem:
    """A non-fatal finding about one file or CSV row.

    ``kind`` is a stable keyword (``missing_file``, ``unreadable``, ``unknown_label``,
    ``duplicate_id``, ``empty_class``, ``ignored_file``, ``not_8bit``, ``too_small``, ...) so that
    tools can group problems; ``severity`` is ``"error"`` when the item is left out of the data set
    and ``"warning"`` when it is used anyway.
    """

    kind: str
    path: str
    message: str
    severity: str = "error"

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def require_dir(path: str | os.PathLike | None, dataset: str) -> str:
    """Returns ``path`` as a string, or raises :class:`DataError` if it is not a directory."""
    if path is None:
        raise DataError(f"{dataset}: no data dir given (pass data_dir / --data-dir)")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: data dir does not exist ({dataset})")
    if not os.path.isdir(path):
        raise DataError(f"{path}: data dir is not a directory ({dataset})")
    return path
