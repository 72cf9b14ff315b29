"""The data set registry and :func:`make_dataset`, the one entry point that opens any data set.

``DATASETS`` maps each name to a frozen :class:`DatasetInfo` whose fields are the per-data-set facts
that training presets read: ``class_names`` (in reference index order), ``image_size`` (the
reference's / paper's size, or 64 for the CPU-sized phantoms), ``channels`` fed to the model (3, as
the reference converts everything to RGB), ``stored_channels`` (1 for grayscale modalities, used
for prepared data), ``splits``, ``builtin`` (needs no data dir), and the modality's measurement
(``measure``, ``threshold``, ``positive_class``, ``feature``), and ``spatial_dims`` (2 for images,
3 for volumes: items are ``[D, H, W, C]`` cubes of side ``image_size``).

Names: ``airogs``, ``chexpert``, ``crcdx``, ``folder``, ``phantom-fundus``, ``phantom-cxr``,
``phantom-histo``, and for volumes ``phantom-brain`` and ``volume-folder``. ``folder`` and
``volume-folder`` have no fixed classes (their entries' ``class_names`` are empty): they are the
sub-folder names (or a CSV's labels), in ``source.class_names``.

:func:`make_dataset` returns an :class:`~medfusion_jax.data.source.ImageSource`: a phantom source,
a source over data prepared by ``python -m medfusion_jax.data.prepare`` (array_record read through
``tfds``), or a source over the user's files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from medfusion_jax.data import airogs, chexpert, crcdx, folder, prepared, volumes
from medfusion_jax.data.errors import DataError
from medfusion_jax.data.phantoms import PhantomSource, brain, cxr, fundus, histo
from medfusion_jax.data.source import ImageSource


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Facts about one data set (see the module docstring)."""

    name: str
    description: str
    modality: str
    class_names: tuple[str, ...]
    image_size: int
    channels: int = 3
    stored_channels: int = 3
    splits: tuple[str, ...] = ("train",)
    builtin: bool = False
    feature: str | None = None
    measure: Callable[[np.ndarray], float] | None = dataclasses.field(default=None, compare=False, repr=False)
    threshold: float | None = None
    positive_class: int | None = None
    #: TFDS builder name of prepared data, for data sets with a builder.
    tfds_name: str | None = None
    opener: Callable[..., ImageSource] | None = dataclasses.field(default=None, compare=False, repr=False)
    render: Callable | None = dataclasses.field(default=None, compare=False, repr=False)
    spatial_dims: int = 2

    def classify(self, image: np.ndarray) -> int:
        """The class the measurement indicates at the fixed threshold (binary data sets only)."""
        if self.measure is None or self.threshold is None or self.positive_class is None:
            raise ValueError(f"{self.name} has no measurement")
        value = self.measure(image)
        return self.positive_class if value > self.threshold else 1 - self.positive_class


def _measured(module) -> dict:
    return dict(
        feature=module.FEATURE,
        measure=module.measure,
        threshold=module.THRESHOLD,
        positive_class=module.POSITIVE_CLASS,
    )


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            name="airogs",
            description="AIROGS colour fundus photographs, referable glaucoma (RG) vs not (NRG)",
            modality="fundus",
            class_names=airogs.CLASS_NAMES,
            image_size=256,
            splits=airogs.SPLITS,
            tfds_name="medfusion_airogs",
            opener=airogs.open_source,
            **_measured(fundus),
        ),
        DatasetInfo(
            name="chexpert",
            description="CheXpert frontal chest radiographs, cardiomegaly (positive or uncertain) vs not",
            modality="chest x-ray",
            class_names=chexpert.CLASS_NAMES,
            image_size=256,
            stored_channels=1,
            splits=chexpert.SPLITS,
            tfds_name="medfusion_chexpert",
            opener=chexpert.open_source,
            **_measured(cxr),
        ),
        DatasetInfo(
            name="crcdx",
            description="CRC-DX colorectal cancer H&E tiles, MSI-H vs non-MSI-H",
            modality="histology",
            class_names=crcdx.CLASS_NAMES,
            image_size=512,
            splits=("train", "test"),
            tfds_name="medfusion_crcdx",
            opener=crcdx.open_source,
            **_measured(histo),
        ),
        DatasetInfo(
            name="folder",
            description="Any image folder: one sub-folder per class, or flat (PNG/JPEG/TIFF/DICOM)",
            modality="any",
            class_names=(),
            image_size=256,
            opener=folder.open_source,
        ),
        DatasetInfo(
            name="volume-folder",
            description="Any CT/MRI volumes: NIfTI files or DICOM series, one class per folder or a labels.csv",
            modality="CT/MRI",
            class_names=(),
            image_size=64,
            channels=1,
            stored_channels=1,
            opener=volumes.open_source,
            spatial_dims=3,
        ),
        DatasetInfo(
            name="phantom-fundus",
            description="Built-in fundus phantom; class 1 has a larger vertical cup-to-disc ratio",
            modality="fundus",
            class_names=fundus.CLASS_NAMES,
            image_size=64,
            splits=("train", "validation", "test"),
            builtin=True,
            render=fundus.render,
            **_measured(fundus),
        ),
        DatasetInfo(
            name="phantom-cxr",
            description="Built-in chest radiograph phantom; class 1 has a cardiothoracic ratio above 0.5",
            modality="chest x-ray",
            class_names=cxr.CLASS_NAMES,
            image_size=64,
            stored_channels=1,
            splits=("train", "validation", "test"),
            builtin=True,
            render=cxr.render,
            **_measured(cxr),
        ),
        DatasetInfo(
            name="phantom-histo",
            description="Built-in H&E phantom; class 0 (MSI-H) has dense lymphocyte infiltration",
            modality="histology",
            class_names=histo.CLASS_NAMES,
            image_size=64,
            splits=("train", "validation", "test"),
            builtin=True,
            render=histo.render,
            **_measured(histo),
        ),
        DatasetInfo(
            name="phantom-brain",
            description="Built-in T1 brain MRI volume phantom; class 1 has enlarged ventricles (ventricle-to-brain "
                        "ratio above 0.06)",
            modality="brain MRI",
            class_names=brain.CLASS_NAMES,
            image_size=32,
            channels=1,
            stored_channels=1,
            splits=("train", "validation", "test"),
            builtin=True,
            render=brain.render,
            spatial_dims=3,
            **_measured(brain),
        ),
    ]
}


def get_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def make_dataset(
    name: str,
    data_dir: str | None = None,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    *,
    num_examples: int | None = None,
    seed: int = 0,
    strict: bool = False,
    allow_upscale: bool = False,
    use_prepared: bool | None = None,
    volume_transform: volumes.VolumeTransform | None = None,
) -> ImageSource:
    """Opens a data set as a random-access source of ``{"image": uint8 [H, W, C], "label": int}`` (volumes:
    ``[D, H, W, C]``).

    Args:
      name: a key of :data:`DATASETS`.
      data_dir: the user's copy (raw layout) or the ``--out`` dir of ``prepare``; ignored by the
        phantoms.
      split: ``train`` (all data sets), ``validation``/``test`` where the data set has them.
      image_size: output side length; defaults to the registry's ``image_size``.
      channels: the data set's default (3 for images: grayscale replicated, like the reference; 1 for
        volumes) or 1.
      num_examples: phantoms only: items in the split (default 10,000 train, 1,000 otherwise).
      seed: phantoms only: the seed of the procedural generator.
      strict: raise :class:`DataError` on any problem of the index scan (missing files, unknown
        labels, duplicates, empty class folders) instead of leaving those items out.
      allow_upscale: enlarge images smaller than ``image_size`` instead of rejecting them.
      use_prepared: ``None``: read prepared data if ``data_dir`` holds some for this data set,
        else the raw layout; ``True``: require prepared data; ``False``: always read the raw layout.
      volume_transform: ``volume-folder`` only: a :class:`~medfusion_jax.data.volumes.VolumeTransform`
        (None: its default, resize and z-score).
    """
    info = get_info(name)
    if volume_transform is not None and name != "volume-folder":
        raise ValueError(f"a volume transform applies to volume-folder only, not {name}")
    channels = channels or info.channels
    if info.builtin:
        return PhantomSource(
            info,
            info.render,
            split=split,
            image_size=image_size or info.image_size,
            channels=channels,
            num_examples=num_examples,
            seed=seed,
        )
    if use_prepared is not False and info.tfds_name and data_dir is not None:
        path = prepared.find(data_dir, info.tfds_name, image_size)
        if path is not None:
            return prepared.PreparedSource(info, path, split=split, channels=channels)
        if use_prepared:
            raise DataError(f"{data_dir}: no prepared {name} data (run python -m medfusion_jax.data.prepare)")
    extra = {} if volume_transform is None else {"options": volume_transform}
    return info.opener(
        info,
        data_dir,
        split=split,
        image_size=image_size,
        channels=channels,
        strict=strict,
        allow_upscale=allow_upscale,
        **extra,
    )
