"""Reading label CSVs with clear errors (missing file, missing columns, unreadable text)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence

from medfusion_jax.data.errors import DataError


def read_rows(path: str, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yields ``(line_number, row)`` of a CSV after checking that ``required`` columns exist.

    Cells are stripped of surrounding whitespace; a UTF-8 byte-order mark is ignored.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: label CSV not found")
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot open label CSV ({e.strerror or e})") from None
    with f:
        try:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(
                    f"{path}: CSV lacks column(s) {', '.join(map(repr, missing))} "
                    f"(found: {', '.join(map(repr, header)) or 'no header'})"
                )
            reader.fieldnames = header
            for row in reader:
                yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not a UTF-8 text CSV ({e})") from None
        except csv.Error as e:
            raise DataError(f"{path}: malformed CSV ({e})") from None
