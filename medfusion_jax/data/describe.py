"""``describe``: what is in a data set and everything that is wrong with it, as a JSON-able dict.

:func:`describe` opens a data set the way training does (without ``strict``, so that it sees past
the first problem) and reports:

* ``num_images`` and ``classes`` (images per class name);
* ``sample``: for ``sample`` images chosen at random (or all of them with ``sample=None``), the
  distribution of stored sizes, modes, bit depths and formats, read from the file headers, with
  every sampled file fully decoded so that truncated files are found;
* ``problems``: every finding, each with ``kind``, ``path`` (file, or ``CSV:line``), ``message`` and
  ``severity``: from the index scan (missing files listed in the CSV, unknown labels, duplicate
  ids, empty class folders, images outside the index) and from the sample (unreadable, zero-byte,
  truncated, too small for the crop, not 8-bit); ``problem_counts`` sums them by kind;
* ``prepared`` (prepared data only): its folder and how many images the preparation skipped or
  found problems with (listed in its ``metadata.json``);
* ``ok``: no problem of severity ``error``. A data set that cannot be opened at all (missing data
  dir, CSV without the expected columns) gives ``ok: false`` with that one problem.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np
from tqdm import tqdm

from medfusion_jax.data import images
from medfusion_jax.data.errors import DataError, ImageError, Problem
from medfusion_jax.data.prepared import PreparedSource
from medfusion_jax.data.registry import get_info, make_dataset
from medfusion_jax.data.source import FileSource, ImageSource

DEFAULT_SAMPLE = 500


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {"min": int(arr.min()), "median": float(np.median(arr)), "max": int(arr.max())}


def _top(counter: collections.Counter, n: int = 10) -> dict[str, int]:
    return dict(counter.most_common(n))


def _check_files(source: FileSource, indices: np.ndarray) -> tuple[dict[str, Any], list[Problem]]:
    sizes, modes, bits, formats = (collections.Counter() for _ in range(4))
    widths, heights = [], []
    problems: list[Problem] = []
    for i in tqdm(indices, desc="checking images", unit="img", leave=False):
        path = source.paths[i]
        try:
            header = images.probe(path)
            decoded = images.decode(path)
        except ImageError as e:
            problems.append(Problem("unreadable", path, e.reason))
            continue
        sizes[f"{header['width']}x{header['height']}"] += 1
        modes[header["mode"]] += 1
        bits[str(header["bits"])] += 1
        formats[header["format"]] += 1
        widths.append(header["width"])
        heights.append(header["height"])
        for note in decoded.notes:
            if not note.startswith("DICOM"):
                problems.append(Problem("not_8bit", path, note, "warning"))
        w, h = decoded.image.size
        if min(w, h) < source.image_size and not source.allow_upscale:
            problems.append(
                Problem("too_small", path, f"image is {w}x{h}, too small for {source.image_size}x{source.image_size}")
            )
    summary = {
        "checked": int(len(indices)),
        "sizes": _top(sizes),
        "width": _stats(widths),
        "height": _stats(heights),
        "modes": _top(modes),
        "bits": _top(bits),
        "formats": _top(formats),
    }
    return summary, problems


def _check_items(source: ImageSource, indices: np.ndarray) -> tuple[dict[str, Any], list[Problem]]:
    shapes = collections.Counter()
    problems: list[Problem] = []
    for i in tqdm(indices, desc="checking items", unit="img", leave=False):
        try:
            image = source[int(i)]["image"]
        except ImageError as e:
            problems.append(Problem("unreadable", e.path, e.reason))
            continue
        shapes["x".join(map(str, image.shape))] += 1
    return {"checked": int(len(indices)), "shapes": _top(shapes)}, problems


def describe(
    name: str,
    data_dir: str | None = None,
    *,
    split: str = "train",
    image_size: int | None = None,
    sample: int | None = DEFAULT_SAMPLE,
    seed: int = 0,
) -> dict[str, Any]:
    """Report on a data set (see the module docstring); ``sample=None`` checks every image."""
    info = get_info(name)
    report: dict[str, Any] = {
        "dataset": name,
        "data_dir": os.path.abspath(data_dir) if data_dir else None,
        "split": split,
    }
    try:
        source = make_dataset(name, data_dir, split, image_size)
    except DataError as e:
        problem = Problem("fatal", data_dir or name, str(e))
        report.update(ok=False, problems=[problem.as_dict()], problem_counts={"fatal": 1})
        return report
    report["kind"] = "builtin" if info.builtin else "files" if isinstance(source, FileSource) else "prepared"
    report["image_size"] = source.image_size
    report["num_images"] = len(source)
    report["classes"] = source.class_counts()
    n = len(source)
    count = n if sample is None else min(sample, n)
    indices = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
    if isinstance(source, FileSource):
        summary, found = _check_files(source, indices)
    else:
        summary, found = _check_items(source, indices)
    problems = list(source.problems) + found
    if isinstance(source, PreparedSource):
        # What preparation left out is no longer visible in the prepared files themselves.
        meta = source.metadata
        report["prepared"] = {
            "path": source.path,
            "skipped_when_prepared": meta.get("skipped", {}).get(split, {}).get("count", 0),
            "index_problems_when_prepared": meta.get("problems", {}).get(split, {}).get("count", 0),
        }
    report["sample"] = summary
    report["problems"] = [p.as_dict() for p in problems]
    report["problem_counts"] = dict(collections.Counter(p.kind for p in problems))
    report["ok"] = not any(p.severity == "error" for p in problems)
    return report
