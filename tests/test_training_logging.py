"""Hand-written TensorBoard event files, metric records and the loss-curve plot."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from PIL import Image

from medfusion_jax.training.logging import (
    MetricsLog,
    TensorBoardWriter,
    crc32c,
    read_metrics,
    read_tfrecords,
)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


def decode(data: bytes) -> dict[int, list]:
    """A minimal protobuf decoder: field number -> list of raw values (ints, floats, bytes)."""
    fields: dict[int, list] = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = struct.unpack("<d", data[i:i + 8])[0], i + 8
        elif wire == 5:
            value, i = struct.unpack("<f", data[i:i + 4])[0], i + 4
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i:i + length], i + length
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283


def test_event_file_holds_scalars_and_images(tmp_path):
    writer = TensorBoardWriter(tmp_path)
    writer.scalars(7, {"train/loss": 0.25, "train/kl": 3.0})
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    writer.image(9, "samples", image)
    writer.close()
    assert "tfevents" in writer.path.name
    events = [decode(r) for r in read_tfrecords(writer.path)]
    assert events[0][3] == [b"brain.Event:2"]
    assert events[1][2] == [7]
    values = [decode(v) for v in decode(events[1][5][0])[1]]
    assert {v[1][0]: v[2][0] for v in values} == {b"train/loss": 0.25, b"train/kl": 3.0}
    (value,) = [decode(v) for v in decode(events[2][5][0])[1]]
    assert value[1] == [b"samples"] and events[2][2] == [9]
    summary_image = decode(value[4][0])
    assert (summary_image[1], summary_image[2], summary_image[3]) == ([4], [6], [3])
    png = tmp_path / "decoded.png"
    png.write_bytes(summary_image[4][0])
    np.testing.assert_array_equal(np.asarray(Image.open(png)), image)

    data = bytearray(writer.path.read_bytes())
    data[-6] ^= 0xFF
    writer.path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt record"):
        list(read_tfrecords(writer.path))


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


