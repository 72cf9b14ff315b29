"""The images of a registered data set, in order, for the evaluation commands (FID, autoencoder metrics).

Images come as the training pipeline prepares them (the data set's resize/crop), as uint8 HWC. An
unreadable image is skipped, as in training, and recorded in :attr:`DatasetImages.skipped`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from medfusion_jax.data import ImageError, make_dataset


class DatasetImages:
    """Iterable over the uint8 [H, W, C] images of a split of a :data:`medfusion_jax.data.DATASETS` entry.

    ``num_examples`` sets the size of a built-in phantom's split (ignored by the other data sets);
    ``limit`` keeps only the first ``limit`` items of any data set. While iterating, the class name of
    each image returned is appended to :attr:`labels`, and each skipped image's error to :attr:`skipped`.
    """

    def __init__(self, name: str, *, data_dir: str | None = None, split: str = "train",
                 image_size: int | None = None, channels: int = 3, num_examples: int | None = None,
                 limit: int | None = None):
        self.name, self.split = name, split
        self.source = make_dataset(name, data_dir=data_dir, split=split, image_size=image_size,
                                   channels=channels, num_examples=num_examples)
        self.total = len(self.source) if limit is None else min(len(self.source), max(0, int(limit)))
        #: Items [start, stop) of those are read (a process's share in a multi-process evaluation).
        self.start, self.stop = 0, self.total
        self.labels: list[str] = []
        self.skipped: list[str] = []

    def __len__(self) -> int:
        """Items that will be read (unreadable ones among them are skipped)."""
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.start, self.stop):
            try:
                item = self.source[i]
            except ImageError as err:
                self.skipped.append(str(err))
                continue
            self.labels.append(self.source.class_names[int(item["label"])])
            yield item["image"]

    def skipped_note(self) -> str | None:
        """One line about the skipped images, or None."""
        if not self.skipped:
            return None
        return f"skipped {len(self.skipped)} unreadable images of {self.name}: first: {self.skipped[0]}"
