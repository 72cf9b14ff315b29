"""What a run reports: JSON lines, TensorBoard event files, PNG grids, and the final loss curve.

* ``metrics.jsonl``: one JSON object per record, ``{"step": ..., "time": ..., "<metric>": ...}``. When a
  run resumes from step s, records after s (written before the interruption) are dropped first, so the
  file always describes one consistent history.
* TensorBoard: ``events.out.tfevents.*`` files with scalar and image summaries. Neither TensorFlow nor
  tensorboardX is in the stack, so :class:`TensorBoardWriter` writes the two protobuf messages it
  needs (``Event`` and ``Summary``) and the TFRecord framing (length, masked CRC-32C) by hand.
* ``images/step_XXXXXXX.png``: reconstruction or sample grids.
* ``loss_curve.png``: drawn with matplotlib (:mod:`medfusion_jax.plots`) at the end of a run.
"""

from __future__ import annotations

import io
import json
import math
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

METRICS_JSONL = "metrics.jsonl"


class MetricsLog:
    """Appends metric records to ``metrics.jsonl``, after dropping records beyond ``resume_step``."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        self.path = Path(run_dir) / METRICS_JSONL
        if self.path.exists():
            kept = [r for r in read_metrics(self.path) if resume_step is not None and r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": int(step), "time": round(time.time(), 3), **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a torn last line from a killed run is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# -- TensorBoard ------------------------------------------------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord files."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: uint64 length, masked CRC of the length, the data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= 0xFFFFFFFFFFFFFFFF
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3 | 0) + _varint(value)


def scalar_value(tag: str, value: float) -> bytes:
    """``Summary.Value{tag, simple_value}``."""
    return _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)


def image_value(tag: str, image: np.ndarray) -> bytes:
    """``Summary.Value{tag, image: Summary.Image{height, width, colorspace, encoded PNG}}``."""
    h, w = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    encoded = (_field_varint(1, h) + _field_varint(2, w) + _field_varint(3, channels)
               + _field_bytes(4, png.getvalue()))
    return _field_bytes(1, tag.encode()) + _field_bytes(4, encoded)


def event(wall_time: float, step: int, *, summary_values: Sequence[bytes] = (), file_version: str | None = None) -> bytes:
    """An ``Event`` message: wall_time (1), step (2), file_version (3) or summary (5)."""
    message = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _field_varint(2, step)
    if file_version is not None:
        message += _field_bytes(3, file_version.encode())
    if summary_values:
        message += _field_bytes(5, b"".join(_field_bytes(1, v) for v in summary_values))
    return message


class TensorBoardWriter:
    """Writes an ``events.out.tfevents.<time>.<host>`` file that TensorBoard reads."""

    def __init__(self, log_dir: str | Path):
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = log_dir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        self._file = open(self.path, "ab")
        self._file.write(tfrecord(event(now, 0, file_version="brain.Event:2")))
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = [scalar_value(tag, float(v)) for tag, v in values.items()]
        self._file.write(tfrecord(event(time.time(), step, summary_values=summary)))
        self._file.flush()

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        self._file.write(tfrecord(event(time.time(), step, summary_values=[image_value(tag, image)])))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_tfrecords(path: str | Path) -> Iterable[bytes]:
    """The payloads of a TFRecord file, each checked against its CRCs (ValueError on corruption)."""
    data = Path(path).read_bytes()
    offset = 0
    while offset < len(data):
        header = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
        payload = data[offset + 12:offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
        if masked_crc32c(header) != length_crc or masked_crc32c(payload) != payload_crc:
            raise ValueError(f"{path}: corrupt record at byte {offset}")
        yield payload
        offset += 16 + length


# -- images ------------------------------------------------------------------------------------------

def save_png(path: str | Path, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def downsample_records(records: list[dict], key: str, max_points: int = 2000) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` in ``records``, averaged into at most ``max_points`` buckets."""
    pairs = [(r["step"], r[key]) for r in records if key in r]
    if not pairs:
        return [], []
    steps, values = (np.asarray(x, float) for x in zip(*pairs))
    if len(steps) > max_points:
        edges = np.linspace(0, len(steps), max_points + 1).astype(int)
        steps = np.asarray([steps[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
        values = np.asarray([values[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    return [int(s) for s in steps], [float(v) if math.isfinite(v) else float("nan") for v in values]
