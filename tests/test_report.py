"""The Markdown/HTML report writer."""

import math

import numpy as np
import pytest
from PIL import Image

from medfusion_jax import report


def test_markdown_and_html_hold_every_block(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "grid.png")
    blocks = [report.heading("Scores"), report.text("FID against <held-out> images."),
              report.table(["metric", "value"], [["FID", 12.345678], ["n", 500], ["PR", math.nan]]),
              report.images([("grid.png", "class a")])]
    md, page = report.write_report(tmp_path, blocks, "Demo")
    text = md.read_text()
    assert text.startswith("# Demo\n")
    assert "## Scores" in text and "| FID | 12.35 |" in text and "| n | 500 |" in text and "| PR | n/a |" in text
    assert "![class a](grid.png)" in text
    html = page.read_text()
    assert "<h1>Demo</h1>" in html and "<td>12.35</td>" in html
    assert "&lt;held-out&gt;" in html and "<img src='grid.png'" in html


def test_missing_image_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        report.write_report(tmp_path, [report.images([("nope.png", "x")])], "Demo")


def test_format_value():
    assert report.format_value(0.000123456) == "0.0001235"
    assert report.format_value(float("inf")) == "inf"
    assert report.format_value(True) == "True" and report.format_value(None) == ""
