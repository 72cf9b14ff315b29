"""TensorBoard event files (tensorboardX, read back with TensorBoard's own reader), metric records."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from medfusion_jax.training.logging import MetricsLog, TensorBoardWriter, read_metrics
from tests.tensorboard_events import read_events


def test_event_file_holds_scalars_and_images(tmp_path):
    writer = TensorBoardWriter(tmp_path)
    writer.scalars(7, {"train/loss": 0.25, "train/kl": 3.0})
    writer.scalars(8, {"train/loss": 0.125, "train/kl": 2.0})
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    writer.image(9, "samples", image)
    writer.image(10, "gray", image[..., :1])
    writer.close()
    assert writer.path.name.startswith("events.out.tfevents.") and writer.path.parent == tmp_path
    events = read_events(writer.path)
    assert events.scalars["train/loss"] == [(7, 0.25), (8, 0.125)]
    assert events.scalars["train/kl"] == [(7, 3.0), (8, 2.0)]
    (step, height, width, png), = events.images["samples"]
    assert (step, height, width) == (9, 4, 6)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), image)
    (step, _, _, png), = events.images["gray"]
    assert step == 10
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("L")), image[..., 0])


def test_resumed_metrics_drop_records_after_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path)
    for step in range(1, 8):
        log.write(step, {"loss": 1.0 / step})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')  # torn by a kill
    log = MetricsLog(tmp_path, resume_step=4)
    log.write(5, {"loss": 0.5})
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]


