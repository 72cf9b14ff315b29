"""Every plot the project writes, with matplotlib's Agg backend (no screen needed): axes with ticks and
labels, legends, and reference values drawn as horizontal lines.

- :func:`line_plot`: curves over training steps (losses; FID/KID/precision/recall per checkpoint), with
  optional error bars and named reference lines, log-scale y when a curve spans more than a factor 10;
- :func:`metric_panels`: several such plots side by side in one figure (one panel per metric);
- :func:`class_histograms`: per class, the distribution of a measured feature on generated and real
  images, overlaid, with the class's range and the decision threshold marked.

The figures are written as PNG at a fixed DPI; functions return the path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

DPI = 110
#: Colours of the curves (matplotlib's default cycle) and of the reference lines.
REFERENCE_STYLES = ("--", ":", "-.")
REFERENCE_COLOURS = ("0.35", "tab:green", "tab:purple", "tab:brown")

_Floats = Sequence[float]
Series = Mapping[str, tuple[_Floats, _Floats] | tuple[_Floats, _Floats, _Floats]]


def _finite_series(series: Series) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    out = {}
    for name, values in series.items():
        x = np.asarray(values[0], float)
        y = np.asarray(values[1], float)
        err = np.asarray(values[2], float) if len(values) > 2 and values[2] is not None else None
        keep = np.isfinite(y)
        if keep.any():
            out[name] = (x[keep], y[keep], err[keep] if err is not None else None)
    return out


def _draw(ax, series: Series, references: Mapping[str, float] | None, *, title: str, xlabel: str,
          ylabel: str, log_y: bool | None) -> None:
    finite = _finite_series(series)
    refs = {k: float(v) for k, v in (references or {}).items() if v is not None and math.isfinite(float(v))}
    for name, (x, y, err) in finite.items():
        marker = "o" if len(x) <= 20 else None
        if err is not None:
            ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=name)
        else:
            ax.plot(x, y, marker=marker, label=name)
    for i, (name, value) in enumerate(refs.items()):
        ax.axhline(value, linestyle=REFERENCE_STYLES[i % len(REFERENCE_STYLES)],
                   color=REFERENCE_COLOURS[i % len(REFERENCE_COLOURS)], label=name)
    values = np.concatenate([y for _, y, _ in finite.values()] + [np.asarray(list(refs.values()), float)]) \
        if finite or refs else np.zeros(0)
    if log_y is None:
        log_y = bool(values.size and np.all(values > 0) and values.max() > 10 * values.min())
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if finite or refs:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def line_plot(path: str | Path, series: Series, *, title: str = "", xlabel: str = "step", ylabel: str = "",
              references: Mapping[str, float] | None = None, log_y: bool | None = None,
              size: tuple[float, float] = (7.0, 4.0)) -> Path:
    """Curves ``{name: (x, y)}`` or ``{name: (x, y, yerr)}`` and horizontal ``references`` ``{name: y}``.

    Non-finite points are left out. ``log_y=None`` picks a log scale when every value is positive and
    they span more than a factor of 10.
    """
    fig, ax = plt.subplots(figsize=size)
    _draw(ax, series, references, title=title, xlabel=xlabel, ylabel=ylabel, log_y=log_y)
    return _save(fig, path)


def metric_panels(path: str | Path, panels: Sequence[Mapping], *, suptitle: str = "", columns: int = 2,
                  panel_size: tuple[float, float] = (5.0, 3.4)) -> Path:
    """One figure of several :func:`line_plot` panels; each panel is a mapping with ``series`` and
    optionally ``references``, ``title``, ``xlabel``, ``ylabel``, ``log_y``."""
    rows = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(panel_size[0] * columns, panel_size[1] * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        _draw(ax, panel["series"], panel.get("references"), title=panel.get("title", ""),
              xlabel=panel.get("xlabel", "step"), ylabel=panel.get("ylabel", ""), log_y=panel.get("log_y", False))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, path)


def class_histograms(path: str | Path, per_class: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                     feature: str, threshold: float | None = None,
                     ranges: Mapping[str, tuple[float, float]] | None = None,
                     labels: tuple[str, str] = ("generated", "real"), bins: int = 30) -> Path:
    """Per class (one panel each): histograms of ``(generated, real)`` values of ``feature`` on shared
    bins, as densities, with the class's ``ranges`` shaded and the decision ``threshold`` as a line."""
    names = list(per_class)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5.0 * max(1, len(names)), 3.6), squeeze=False)
    finite = {n: tuple(np.asarray(v, float)[np.isfinite(np.asarray(v, float))] for v in per_class[n])
              for n in names}
    every = np.concatenate([v for pair in finite.values() for v in pair]) if names else np.zeros(0)
    if every.size:
        lo, hi = float(every.min()), float(every.max())
        if threshold is not None:
            lo, hi = min(lo, threshold), max(hi, threshold)
        pad = 0.02 * (hi - lo or 1.0)
        edges = np.linspace(lo - pad, hi + pad, bins + 1)
    else:
        edges = np.linspace(0.0, 1.0, bins + 1)
    for ax, name in zip(axes.flat, names, strict=False):
        generated, real = finite[name]
        if ranges and name in ranges:
            ax.axvspan(*ranges[name], color="0.9", label="drawn range (real)")
        ax.hist(real, bins=edges, density=True, alpha=0.5, color="tab:blue", label=f"{labels[1]} (n={real.size})")
        ax.hist(generated, bins=edges, density=True, alpha=0.5, color="tab:orange",
                label=f"{labels[0]} (n={generated.size})")
        if threshold is not None:
            ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:g}")
        ax.set_title(name)
        ax.set_xlabel(feature)
        ax.set_ylabel("density")
        ax.legend(fontsize="small")
    return _save(fig, path)
