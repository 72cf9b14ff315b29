"""Read an event file back with TensorBoard's own loader (an independent reader, not the writer's library)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@dataclasses.dataclass
class Events:
    scalars: dict[str, list[tuple[int, float]]]
    images: dict[str, list[tuple[int, int, int, bytes]]]  # (step, height, width, encoded PNG)


def read_events(path: str | Path) -> Events:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {t: [(e.step, e.height, e.width, e.encoded_image_string) for e in acc.Images(t)]
              for t in tags["images"]}
    return Events(scalars, images)
