"""A run report as Markdown and HTML from one list of blocks.

A report is a list of blocks, each a small dict, rendered twice: ``report.md`` for a terminal or a
code host, ``report.html`` (self-contained apart from the PNGs beside it) for a browser. Image paths
are relative to the report's folder, so the folder can be copied or zipped as a whole.

Blocks::

    {"kind": "heading", "text": str, "level": 1..3}
    {"kind": "text", "text": str}                          # one paragraph, Markdown-safe plain text
    {"kind": "table", "header": [str], "rows": [[value]]}  # floats are formatted to 4 significant digits
    {"kind": "images", "images": [(path, caption)]}        # shown side by side
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def heading(text: str, level: int = 2) -> dict:
    return {"kind": "heading", "text": text, "level": level}


def text(value: str) -> dict:
    return {"kind": "text", "text": value}


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict:
    return {"kind": "table", "header": list(header), "rows": [list(r) for r in rows]}


def images(items: Sequence[tuple[str | os.PathLike, str]]) -> dict:
    return {"kind": "images", "images": [(str(p), c) for p, c in items]}


def format_value(value: Any) -> str:
    """Numbers as a person reads them: 4 significant digits, NaN/inf spelled out, ints as ints."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    return str(value)


def to_markdown(blocks: Sequence[dict]) -> str:
    out: list[str] = []
    for block in blocks:
        kind = block["kind"]
        if kind == "heading":
            out.append("#" * block["level"] + " " + block["text"])
        elif kind == "text":
            out.append(block["text"])
        elif kind == "table":
            cells = [[format_value(v).replace("|", "\\|") for v in row] for row in block["rows"]]
            out.append("| " + " | ".join(block["header"]) + " |")
            out.append("|" + "|".join("---" for _ in block["header"]) + "|")
            out.extend("| " + " | ".join(row) + " |" for row in cells)
        elif kind == "images":
            # A one-row table puts the images side by side with their captions under them.
            items = block["images"]
            out.append("| " + " | ".join(f"![{c}]({p})" for p, c in items) + " |")
            out.append("|" + "|".join("---" for _ in items) + "|")
            out.append("| " + " | ".join(c for _, c in items) + " |")
        else:
            raise ValueError(f"unknown report block kind {kind!r}")
        out.append("")
    return "\n".join(out)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
td, th { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0 1rem 1rem 0; vertical-align: top; }
figure img { image-rendering: pixelated; max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #555; }
"""


def to_html(blocks: Sequence[dict], title: str) -> str:
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
           f"<style>{_STYLE}</style></head><body>"]
    for block in blocks:
        kind = block["kind"]
        if kind == "heading":
            level = block["level"]
            out.append(f"<h{level}>{html.escape(block['text'])}</h{level}>")
        elif kind == "text":
            out.append(f"<p>{html.escape(block['text'])}</p>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block["header"]) + "</tr>")
            for row in block["rows"]:
                out.append("<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row) + "</tr>")
            out.append("</table>")
        elif kind == "images":
            out.append("<div>" + "".join(
                f"<figure><img src='{html.escape(p, quote=True)}' alt='{html.escape(c, quote=True)}'>"
                f"<figcaption>{html.escape(c)}</figcaption></figure>" for p, c in block["images"]) + "</div>")
        else:
            raise ValueError(f"unknown report block kind {kind!r}")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(folder: str | os.PathLike, blocks: Sequence[dict], title: str) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``folder``; every image must exist there."""
    folder = Path(folder)
    missing = [p for b in blocks if b["kind"] == "images" for p, _ in b["images"] if not (folder / p).is_file()]
    if missing:
        raise FileNotFoundError(f"report images missing under {folder}: {', '.join(missing)}")
    md, page = folder / "report.md", folder / "report.html"
    md.write_text(f"# {title}\n\n" + to_markdown(blocks))
    page.write_text(to_html([heading(title, 1), *blocks], title))
    return md, page
