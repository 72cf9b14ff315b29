"""Writing prepared copies of AIROGS, CheXpert and CRC-DX (array_record, read back without decoding JPEGs).

:func:`prepare` reads the user's copy through the same reader as training from raw files
(:mod:`~medfusion_jax.data.airogs`, :mod:`~medfusion_jax.data.chexpert`,
:mod:`~medfusion_jax.data.crcdx`), so labels, resizing and cropping are identical, and writes the
format of :mod:`~medfusion_jax.data.prepared` to ``OUT/<tfds_name>/<size>px-<channels>ch-<encoding>/2.0.0/``.

Why not TFDS's builder (used until 2026-12-07): TFDS writes array_record with fixed writer options
(zstd level 3), and decompressing raw pixels became the largest cost of reading them; the only way to
change that was to patch a TFDS internal. Measured with ``bench/data.py --images 256``: TFDS's own
options 979 img/s, uncompressed records 1263-1280 img/s (2026-12-02, another machine). Here the
``array_record`` package (a TFDS dependency already) writes the records uncompressed and Grain reads
them: 3399-3943 img/s against 2612-3061 img/s for the patched TFDS copies, alternating runs on one
machine (2026-12-07; TFDS's reader decoded its feature dictionary per record).

* ``image_size``: side length written (default: the registry's, 256 / 256 / 512);
* channels: the registry's ``stored_channels`` (1 for CheXpert, whose images are gray; the source
  replicates to 3 on read);
* ``encoding``: ``raw`` (default; uncompressed uint8 bytes, the fastest to read), ``png`` (lossless,
  about 2-4x smaller, slower to decode) or ``jpeg`` (quality 95, about 8x smaller, lossy; the
  reference itself trained AIROGS from JPEGs).

Unreadable images are skipped and counted in ``prepared.json`` (with per-split class counts and the
problems of the index scan) unless ``strict``. Decoding runs in ``workers`` processes. The copy is
written into a temporary folder that is renamed when complete: an interrupted preparation leaves no
half copy behind, and a complete copy already there is reused.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import shutil
import tempfile
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from medfusion_jax.data.errors import DataError, ImageError
from medfusion_jax.data.prepared import (
    ENCODINGS,
    FORMAT,
    FORMAT_VERSION,
    PREPARED_JSON,
    VERSION_FOLDER,
    config_name,
    encode_record,
)
from medfusion_jax.data.registry import DATASETS, get_info
from medfusion_jax.data.source import FileSource
from medfusion_jax.images import write_json_atomic

JPEG_QUALITY = 95
#: How many problem lines ``prepared.json`` keeps per split (the counts are always complete).
MAX_LISTED_PROBLEMS = 1000
#: A split's records go to a new file after this many bytes (one file per split for most copies).
SHARD_BYTES = 1 << 30
#: array_record writer options: no compression, one record per chunk (random access is one seek).
WRITER_OPTIONS = "group_size:1,uncompressed"
#: The data sets that can be prepared (those with a reader of the paper's raw layout).
PREPARABLE = tuple(name for name, info in DATASETS.items() if info.tfds_name and not info.builtin)

log = logging.getLogger(__name__)


def _encode(image: np.ndarray, encoding: str) -> bytes:
    if encoding == "raw":
        return np.ascontiguousarray(image, np.uint8).tobytes()
    buffer = io.BytesIO()
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    if encoding == "png":
        pil.save(buffer, format="PNG", compress_level=6)
    else:
        pil.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# Each worker process receives the source once (through the pool initializer), not per task.
_worker_source: FileSource | None = None
_worker_encoding = "raw"


def _init_worker(source: FileSource, encoding: str) -> None:
    global _worker_source, _worker_encoding
    _worker_source, _worker_encoding = source, encoding


def _load(index: int) -> tuple[int, Any]:
    try:
        item = _worker_source[index]
    except ImageError as e:
        return index, e
    return index, (_encode(item["image"], _worker_encoding), item["label"])


def _write_split(source: FileSource, folder: str, prefix: str, *, encoding: str, workers: int, strict: bool) -> dict:
    """Writes one split's records; returns its entry of ``prepared.json`` plus its counts."""
    from array_record.python import array_record_module

    counts = np.zeros(len(source.class_names), np.int64)
    skipped, files = [], []
    writer, written = None, 0
    bar = tqdm(total=len(source), desc=f"{prefix}", unit="img", smoothing=0.05)
    if workers > 0:
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(source, encoding))
        results = pool.imap(_load, range(len(source)), chunksize=8)
    else:
        pool = None
        _init_worker(source, encoding)
        results = map(_load, range(len(source)))
    try:
        for index, result in results:
            bar.update()
            if isinstance(result, ImageError):
                if strict:
                    raise result
                skipped.append(str(result))
                continue
            payload, label = result
            if writer is None or written >= SHARD_BYTES:
                if writer is not None:
                    writer.close()
                files.append(f"{prefix}.array_record-{len(files):05d}")
                writer = array_record_module.ArrayRecordWriter(os.path.join(folder, files[-1]), WRITER_OPTIONS)
                written = 0
            record = encode_record(label, source.keys[index], payload)
            writer.write(record)
            written += len(record)
            counts[label] += 1
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        if pool is not None:
            pool.terminate()
    if skipped:
        log.warning("%s: skipped %d unreadable image(s), e.g. %s", prefix, len(skipped), skipped[0])
    return {
        "num_examples": int(counts.sum()),
        "files": files,
        "class_counts": {n: int(c) for n, c in zip(source.class_names, counts, strict=True)},
        "skipped": {"count": len(skipped), "listed": skipped[:MAX_LISTED_PROBLEMS]},
    }


def prepare(
    name: str,
    data_dir: str,
    out: str,
    *,
    image_size: int | None = None,
    encoding: str = "raw",
    workers: int = 0,
    strict: bool = False,
) -> str:
    """Writes the prepared copy of ``name`` from ``data_dir`` below ``out``; returns its folder."""
    if name not in PREPARABLE:
        raise DataError(f"{name!r} cannot be prepared; prepared data exists for {', '.join(PREPARABLE)}")
    if encoding not in ENCODINGS:
        raise DataError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    info = get_info(name)
    size, channels = int(image_size or info.image_size), info.stored_channels
    parent = os.path.join(out, info.tfds_name, config_name(size, channels, encoding))
    final = os.path.join(parent, VERSION_FOLDER)
    if os.path.isfile(os.path.join(final, PREPARED_JSON)):
        log.info("%s: already prepared, reused", final)
        return final
    os.makedirs(parent, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=f".incomplete-{VERSION_FOLDER}-", dir=parent)
    try:
        meta: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dataset": name,
            "name": info.tfds_name,
            "image_size": size,
            "channels": channels,
            "encoding": encoding,
            "class_names": list(info.class_names),
            "record": "<int32 label><uint32 n><n bytes id, UTF-8><image: raw uint8 HxWxC, or a PNG/JPEG file>",
            "splits": {},
            "class_counts": {},
            "skipped": {},
            "problems": {},
        }
        for split in info.splits:
            try:
                source = info.opener(info, data_dir, split=split, image_size=size, channels=channels, strict=strict)
            except DataError as e:
                if split == "train":
                    raise
                log.warning("%s: split %r not prepared: %s", name, split, e)
                continue
            problems = [p.as_dict() for p in source.problems]
            meta["problems"][split] = {"count": len(problems), "listed": problems[:MAX_LISTED_PROBLEMS]}
            entry = _write_split(
                source, folder, f"{info.tfds_name}-{split}", encoding=encoding, workers=workers, strict=strict
            )
            meta["class_counts"][split] = entry.pop("class_counts")
            meta["skipped"][split] = entry.pop("skipped")
            meta["splits"][split] = entry
        write_json_atomic(os.path.join(folder, PREPARED_JSON), meta)
        if os.path.isdir(final):  # an incomplete copy of an older run (no prepared.json): replaced
            shutil.rmtree(final)
        os.replace(folder, final)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return final
