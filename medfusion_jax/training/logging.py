"""What a run reports: JSON lines, TensorBoard event files, PNG grids, and the final loss curve.

* ``metrics.jsonl``: one JSON object per record, ``{"step": ..., "time": ..., "<metric>": ...}``. When a
  run resumes from step s, records after s (written before the interruption) are dropped first, so the
  file always describes one consistent history.
* TensorBoard: ``events.out.tfevents.*`` files with scalar and image summaries, written by tensorboardX
  (pure Python, no TensorFlow).
* ``images/step_XXXXXXX.png``: reconstruction or sample grids.
* ``loss_curve.png``: drawn with matplotlib (:mod:`medfusion_jax.plots`) at the end of a run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from tensorboardX import SummaryWriter

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


class TensorBoardWriter:
    """Scalars and images in an ``events.out.tfevents.*`` file, through tensorboardX's ``SummaryWriter``.

    A thin wrapper so the loop needs three calls (scalars, image, close) and the file's path is known.
    """

    def __init__(self, log_dir: str | Path):
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        before = set(log_dir.glob("events.out.tfevents.*"))
        self._writer = SummaryWriter(logdir=str(log_dir), flush_secs=10)
        self._writer.flush()
        created = sorted(set(log_dir.glob("events.out.tfevents.*")) - before, key=lambda p: p.stat().st_mtime)
        self.path = created[-1] if created else Path(self._writer.file_writer.get_logdir())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=int(step))
        self._writer.flush()

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """``image``: uint8 [H, W] or [H, W, C] (C = 1 or 3)."""
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        self._writer.add_image(tag, image, global_step=int(step), dataformats="HW" if image.ndim == 2 else "HWC")
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def downsample_records(records: list[dict], key: str, max_points: int = 2000) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` in ``records``, averaged into at most ``max_points`` buckets."""
    pairs = [(r["step"], r[key]) for r in records if key in r]
    if not pairs:
        return [], []
    steps, values = (np.asarray(x, float) for x in zip(*pairs, strict=True))
    if len(steps) > max_points:
        edges = np.linspace(0, len(steps), max_points + 1).astype(int)
        steps = np.asarray([steps[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)])
        values = np.asarray([values[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)])
    return [int(s) for s in steps], [float(v) if math.isfinite(v) else float("nan") for v in values]
