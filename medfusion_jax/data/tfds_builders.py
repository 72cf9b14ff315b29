"""TFDS builders for AIROGS, CheXpert and CRC-DX (manual download, array_record, no TensorFlow).

Each builder reads the user's copy through the same reader as training from raw files
(:mod:`~medfusion_jax.data.airogs`, :mod:`~medfusion_jax.data.chexpert`,
:mod:`~medfusion_jax.data.crcdx`), so labels, resizing and cropping are identical, and writes
``OUT/<name>/<config>/1.0.0/*.array_record-*`` with TFDS (``file_format="array_record"``).
TensorFlow is not needed: images are encoded by this module (PIL) and TFDS only serialises them.

Builder names: ``medfusion_airogs``, ``medfusion_chexpert``, ``medfusion_crcdx`` (prefixed so that
they never clash with TFDS's own catalogue). The user's copy is TFDS's *manual dir*.

Config ``<size>px-<channels>ch-<encoding>`` (:func:`make_config`):

* ``image_size``: side length written (default: the registry's, 256 / 256 / 512);
* ``channels``: the registry's ``stored_channels`` (1 for CheXpert, whose images are gray; the
  source replicates to 3 on read);
* ``encoding``: ``raw`` (default; uncompressed uint8 bytes, the fastest to read: no decoding at
  training time), ``png`` (lossless, about 2-4x smaller, slower to decode) or ``jpeg``
  (quality 95, about 8x smaller, lossy; the reference itself trained AIROGS from JPEGs).

Records are written uncompressed (see :class:`_UncompressedArrayRecordAdapter`): reading them is
then a copy, not a decompression. Unreadable images are skipped and listed in ``metadata.json`` (with
per-split class counts and the problems of the index scan) unless ``strict``. Decoding runs in ``workers`` processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import logging
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from etils import epath
from PIL import Image
from tensorflow_datasets.core import file_adapters
from tqdm import tqdm

from medfusion_jax.data.errors import DataError, ImageError
from medfusion_jax.data.registry import DatasetInfo, get_info
from medfusion_jax.data.source import FileSource

ENCODINGS = ("raw", "png", "jpeg")
JPEG_QUALITY = 95
_VERSION = "1.0.0"
#: How many problem lines ``metadata.json`` keeps per split (the counts are always complete).
MAX_LISTED_PROBLEMS = 1000

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class MedfusionConfig(tfds.core.BuilderConfig):
    image_size: int = 256
    channels: int = 3
    encoding: str = "raw"


def make_config(info: DatasetInfo, image_size: int | None = None, encoding: str = "raw") -> MedfusionConfig:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    size = int(image_size or info.image_size)
    channels = info.stored_channels
    return MedfusionConfig(
        name=f"{size}px-{channels}ch-{encoding}",
        description=f"{size}x{size}x{channels} uint8, {encoding}",
        image_size=size,
        channels=channels,
        encoding=encoding,
    )


def _encode(image: np.ndarray, encoding: str) -> np.ndarray | bytes:
    if encoding == "raw":
        return image
    buffer = io.BytesIO()
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    if encoding == "png":
        pil.save(buffer, format="PNG", compress_level=6)
    else:
        pil.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class _UncompressedArrayRecordAdapter(file_adapters.ArrayRecordFileAdapter):
    """TFDS's array_record adapter, but writing the records uncompressed.

    TFDS hard-codes the writer options (zstd level 3). Here the payload is either raw pixels,
    whose decompression would be the largest CPU cost of reading (uncompressed: about 4x more
    records/s, 2x the disk of smooth phantom images, less for photographs), or already PNG/JPEG.
    """

    @classmethod
    def write_examples(cls, path, iterator):
        writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1,uncompressed")
        for _, serialized_example in iterator:
            writer.write(serialized_example)
        writer.close()


@contextlib.contextmanager
def _uncompressed_array_record():
    adapters = file_adapters.ADAPTER_FOR_FORMAT
    fmt = file_adapters.FileFormat.ARRAY_RECORD
    default, adapters[fmt] = adapters[fmt], _UncompressedArrayRecordAdapter
    try:
        yield
    finally:
        adapters[fmt] = default


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


class _MedfusionBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared implementation; subclasses set ``DATASET`` (a registry name)."""

    DATASET = ""
    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {_VERSION: "First release: reference labels and preprocessing."}
    BUILDER_CONFIG_CLASS = MedfusionConfig

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default resolves the package with `importlib_resources`, a backport that this
        # environment does not have (and Python 3.11 does not need); the module file is the answer.
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, workers: int = 0, strict: bool = False, **kwargs):
        self._workers = int(workers)
        self._strict = bool(strict)
        self._extra: dict[str, Any] = {"class_counts": {}, "skipped": {}, "problems": {}}
        super().__init__(**kwargs)

    @property
    def registry_info(self) -> DatasetInfo:
        return get_info(self.DATASET)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        shape = (cfg.image_size, cfg.image_size, cfg.channels)
        if cfg.encoding == "raw":
            image = tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)
        else:
            image = tfds.features.Image(shape=shape, encoding_format=cfg.encoding)
        info = self.registry_info
        return tfds.core.DatasetInfo(
            builder=self,
            description=info.description,
            features=tfds.features.FeaturesDict(
                {
                    "image": image,
                    "label": tfds.features.ClassLabel(names=list(info.class_names)),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        info, cfg = self.registry_info, self.builder_config
        generators = {}
        for split in info.splits:
            try:
                source = info.opener(
                    info,
                    os.fspath(dl_manager.manual_dir),
                    split=split,
                    image_size=cfg.image_size,
                    channels=cfg.channels,
                    strict=self._strict,
                )
            except DataError as e:
                if split == "train":
                    raise
                log.warning("%s: split %r not prepared: %s", info.name, split, e)
                continue
            problems = [p.as_dict() for p in source.problems]
            self._extra["problems"][split] = {"count": len(problems), "listed": problems[:MAX_LISTED_PROBLEMS]}
            generators[split] = self._generate_examples(source=source, split=split)
        return generators

    def _generate_examples(self, source: FileSource, split: str):
        cfg = self.builder_config
        counts = np.zeros(len(source.class_names), np.int64)
        skipped = []
        bar = tqdm(total=len(source), desc=f"{self.name} {split}", unit="img", smoothing=0.05)
        if self._workers > 0:
            pool = multiprocessing.get_context("spawn").Pool(
                self._workers, initializer=_init_worker, initargs=(source, cfg.encoding)
            )
            results = pool.imap(_load, range(len(source)), chunksize=8)
        else:
            pool = None
            _init_worker(source, cfg.encoding)
            results = map(_load, range(len(source)))
        try:
            for index, result in results:
                bar.update()
                if isinstance(result, ImageError):
                    if self._strict:
                        raise result
                    skipped.append(str(result))
                    continue
                payload, label = result
                counts[label] += 1
                key = source.keys[index]
                yield key, {"image": payload, "label": label, "id": key}
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()
        self._extra["class_counts"][split] = {n: int(c) for n, c in zip(source.class_names, counts, strict=True)}
        self._extra["skipped"][split] = {"count": len(skipped), "listed": skipped[:MAX_LISTED_PROBLEMS]}
        self.info.metadata.update(self._extra)
        if skipped:
            log.warning("%s %s: skipped %d unreadable image(s), e.g. %s", self.name, split, len(skipped), skipped[0])


def _manual(name: str, layout: str) -> str:
    return (
        f"Download {name} yourself and pass its folder as the manual dir "
        f"(python -m medfusion_jax.data.prepare --data-dir DIR). Expected layout: {layout}"
    )


class MedfusionAirogs(_MedfusionBuilder):
    """AIROGS fundus photographs (see :mod:`medfusion_jax.data.airogs`)."""

    DATASET = "airogs"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _manual(
        "AIROGS (https://airogs.grand-challenge.org)", "train_labels.csv and <challenge_id>.jpg in any sub-folders"
    )


class MedfusionChexpert(_MedfusionBuilder):
    """CheXpert frontal chest radiographs (see :mod:`medfusion_jax.data.chexpert`)."""

    DATASET = "chexpert"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _manual(
        "CheXpert v1.0 (https://stanfordmlgroup.github.io/competitions/chexpert/)",
        "train.csv, valid.csv and the train/ valid/ patient folders",
    )


class MedfusionCrcdx(_MedfusionBuilder):
    """CRC-DX histology tiles (see :mod:`medfusion_jax.data.crcdx`)."""

    DATASET = "crcdx"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _manual(
        "CRC-DX (Kather, https://zenodo.org/record/2530835)",
        "class folders MSIH/nonMSIH or MSIMUT/MSS, optionally below train/ and test/",
    )


BUILDERS: dict[str, type[_MedfusionBuilder]] = {
    cls.DATASET: cls for cls in (MedfusionAirogs, MedfusionChexpert, MedfusionCrcdx)
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
    """Builds the prepared copy of ``name`` from ``data_dir`` into ``out``; returns its folder."""
    if name not in BUILDERS:
        raise DataError(f"no TFDS builder for {name!r}; prepared data exists for {', '.join(BUILDERS)}")
    info = get_info(name)
    builder = BUILDERS[name](
        data_dir=out,
        config=make_config(info, image_size, encoding),
        file_format="array_record",
        workers=workers,
        strict=strict,
    )
    with _uncompressed_array_record():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=data_dir))
    return os.fspath(builder.data_path)
