"""Data layer of medfusion-jax: readers, built-in phantoms, preparation and the Grain pipeline.

Nothing here imports the rest of medfusion_jax. The API the training and evaluation code uses::

    from medfusion_jax.data import DATASETS, make_dataset, make_loader

    source = make_dataset("chexpert", data_dir="~/CheXpert-v1.0-small", split="train")
    source.class_names, source.image_size, source.measure, source.class_counts()
    loader = make_loader(source, global_batch_size=32, seed=0, flips="")
    batch = next(loader)    # {"image": float32 [B, H, W, 3] in [-1, 1], "label": int32 [B]}
    state = loader.get_state()   # JSON; loader.set_state(state) resumes exactly there

* :data:`DATASETS` (:mod:`~medfusion_jax.data.registry`): name -> :class:`DatasetInfo` with the
  per-data-set facts (class names in reference index order, default size, channels, splits,
  measurement). Names: ``airogs``, ``chexpert``, ``crcdx``, ``folder``, ``phantom-fundus``,
  ``phantom-cxr``, ``phantom-histo``.
* :func:`make_dataset` ``(name, data_dir=None, split="train", image_size=None, channels=None, *,
  num_examples=None, seed=0, strict=False, allow_upscale=False, use_prepared=None)`` ->
  :class:`ImageSource` (Grain random-access source of ``{"image": uint8 [H, W, C], "label": int}``).
* :func:`make_loader` ``(source, *, global_batch_size, seed=0, shuffle=True, num_epochs=None,
  flips="", worker_count=0, shard_index=None, shard_count=None, drop_remainder=True, strict=False)``
  -> :class:`Loader` (a ``grain.DatasetIterator`` with ``get_state``/``set_state`` and
  ``skipped``), see :mod:`~medfusion_jax.data.pipeline`.
* :class:`DataError` / :class:`ImageError`: every message names the file and the fault.

Command lines: ``python -m medfusion_jax.data describe --dataset NAME --data-dir DIR`` (JSON report
of counts and problems), ``python -m medfusion_jax.data list`` (the registry), and
``python -m medfusion_jax.data.prepare --dataset NAME --data-dir SRC --out DIR`` (array_record
written uncompressed, read back automatically by :func:`make_dataset` when ``data_dir`` points at ``DIR``).

Modules: :mod:`~.images` (decoding, bit depth, DICOM windowing, reference resize/crop),
:mod:`~.source` (the source base classes), :mod:`~.airogs`, :mod:`~.chexpert`, :mod:`~.crcdx`,
:mod:`~.folder` (readers of the on-disk layouts), :mod:`~.phantoms` (built-in data sets and their
measurements), :mod:`~.prepared` and :mod:`~.preparation` (array_record), :mod:`~.pipeline`
(Grain), :mod:`~.describe`.
"""

from medfusion_jax.data.errors import DataError, ImageError, Problem
from medfusion_jax.data.pipeline import Loader, ensure_absl_flags_parsed, make_loader, normalize
from medfusion_jax.data.registry import DATASETS, DatasetInfo, get_info, make_dataset
from medfusion_jax.data.source import ImageSource

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "ImageError",
    "ImageSource",
    "Loader",
    "Problem",
    "ensure_absl_flags_parsed",
    "get_info",
    "make_dataset",
    "make_loader",
    "normalize",
]
