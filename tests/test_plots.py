"""The matplotlib figures: curves, reference lines and histograms land where their values say."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medfusion_jax import plots


def _pixels(path, rgb, tol=40):
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return np.all(np.abs(image - np.asarray(rgb)) <= tol, axis=-1)


TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)


def test_line_plot_draws_the_curve_falling_and_the_reference_line(tmp_path):
    steps = [600, 1200, 1800]
    path = plots.line_plot(tmp_path / "fid.png", {"FID": (steps, [240.0, 150.0, 60.0])},
                           references={"real vs real": 20.0}, ylabel="FID", log_y=False)
    blue = _pixels(path, TAB_BLUE)
    rows, cols = np.nonzero(blue)
    assert blue.sum() > 200
    # The curve falls: its leftmost pixels sit higher (smaller row) than its rightmost ones.
    assert rows[cols <= cols.min() + 5].mean() < rows[cols >= cols.max() - 5].mean()
    # The reference line is a long horizontal run of gray below the curve's end.
    gray = _pixels(path, (89, 89, 89), tol=20)
    run_rows = [r for r in range(gray.shape[0]) if gray[r].sum() > 0.5 * gray.shape[1]]
    assert run_rows and min(run_rows) > rows.max() - 5


def test_error_bars_and_non_finite_points(tmp_path):
    path = plots.line_plot(tmp_path / "kid.png", {"KID": ([1, 2, 3], [0.1, float("nan"), 0.05], [0.01, 0.0, 0.02])},
                           references={"missing": float("nan")})
    assert path.is_file() and _pixels(path, TAB_BLUE).sum() > 50


def test_metric_panels_one_figure(tmp_path):
    panel = {"series": {"P": ([1, 2], [0.1, 0.6])}, "references": {"real": 0.7}, "title": "precision"}
    path = plots.metric_panels(tmp_path / "panels.png", [panel, panel, panel], columns=2)
    width, height = Image.open(path).size
    assert width > height  # two columns, two rows of panels at 5 x 3.4 inches
    assert _pixels(path, TAB_BLUE).sum() > 100


def test_class_histograms_overlay_generated_and_real(tmp_path):
    rng = np.random.default_rng(0)
    per_class = {"no cardiomegaly": (rng.uniform(0.36, 0.45, 150), rng.uniform(0.36, 0.45, 250)),
                 "cardiomegaly": (rng.uniform(0.55, 0.66, 150), np.r_[rng.uniform(0.55, 0.66, 249), np.nan])}
    path = plots.class_histograms(tmp_path / "hist.png", per_class, feature="cardiothoracic ratio", threshold=0.5,
                                  ranges={"no cardiomegaly": (0.36, 0.45), "cardiomegaly": (0.55, 0.66)})
    image = np.asarray(Image.open(path).convert("RGB"))
    half = image.shape[1] // 2
    # Both panels show both histograms (blended colours of the two alpha-0.5 bars count as either).
    for panel in (image[:, :half], image[:, half:]):
        assert (np.abs(panel.astype(int) - (143, 187, 217)).sum(-1) < 40).sum() > 100  # real, blue at alpha 0.5
        assert (np.abs(panel.astype(int) - (255, 191, 134)).sum(-1) < 60).sum() > 100  # generated, orange
