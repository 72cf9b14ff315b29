"""``phantom-cxr``: frontal (PA) chest radiographs with a measurable cardiothoracic ratio.

Class names follow the CheXpert cardiomegaly task: 0 = ``no cardiomegaly``, 1 = ``cardiomegaly``.
The clinical sign is the cardiothoracic ratio (CTR, widest transverse heart diameter over widest
inner thoracic diameter): drawn from U(0.36, 0.45) for class 0 and U(0.55, 0.66) for class 1;
:data:`THRESHOLD` = 0.5 is the radiological cut-off for cardiomegaly on a PA film.

The image is grayscale (three equal channels, as the reference feeds CheXpert): air outside the
body, soft tissue of the chest wall and shoulders, two lungs with vascular texture whose bases are
cut by the diaphragm domes, the mediastinum with spine and trachea, the heart silhouette shifted to
the patient's left (image right), posterior ribs and clavicles.

What varies from image to image: position and width of the thorax, lung height, dome heights, heart
position and shape, rib spacing and thickness, exposure (gain, offset, gamma), texture and
quantum noise.

:func:`measure` reads the CTR back from any frontal chest radiograph (phantom or real) with classical
image analysis: smooth and normalise the gray image by its 2nd/98th percentiles; Otsu-threshold it;
the lungs are the two largest dark components that do not touch the image border (holes filled, so
ribs do not split them); the thoracic diameter is the widest row span of the two lungs together;
the cardiac diameter is the distance between the most lateral heart borders (the medial lung
borders) at any level between the hila and the costophrenic recesses (from 40 % to 85 % of the
rows in which both lungs are present).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medfusion_jax.data.phantoms import common

CLASS_NAMES = ("no cardiomegaly", "cardiomegaly")
FEATURE = "cardiothoracic ratio"
THRESHOLD = 0.5
POSITIVE_CLASS = 1
CTR_RANGES = {0: (0.36, 0.45), 1: (0.55, 0.66)}


def _superellipse(size: int, cx: float, cy: float, rx: float, ry: float, p: float) -> np.ndarray:
    y, x = common.grid(size)
    rho = (np.abs((x - cx) / rx) ** p + np.abs((y - cy) / ry) ** p) ** (1.0 / p)
    return common.smoothstep_edge((rho - 1.0) * min(rx, ry), size)


def render(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """One chest radiograph, float32 ``[size, size, 3]`` (equal channels) in [0, 1]."""
    y, x = common.grid(size)
    lo, hi = CTR_RANGES[int(label)]
    ctr = rng.uniform(lo, hi)
    cx = rng.uniform(-0.06, 0.06)  # patient centring
    half_thorax = rng.uniform(0.60, 0.74)  # inner thoracic half-width at the widest level
    apex = rng.uniform(-0.72, -0.60)
    dome = rng.uniform(0.38, 0.52)  # height of the diaphragm domes (y grows downwards)
    dome_shift = rng.uniform(0.02, 0.06)  # the right dome (image left) sits higher (liver)
    heart_rx = ctr * half_thorax  # half of the widest transverse diameter
    heart_cx = cx + rng.uniform(0.25, 0.4) * heart_rx
    heart_ry = rng.uniform(0.24, 0.30)
    heart_angle = rng.uniform(-0.35, -0.15)  # long axis tilted down to the patient's left
    # The widest level sits above the domes, the apex below them, as on a real film.
    heart_cy = dome - 0.08 - rng.uniform(0.10, 0.16)
    mediastinum = rng.uniform(0.08, 0.11)
    rib_gap = rng.uniform(0.115, 0.14)
    rib_width = rng.uniform(0.022, 0.032)
    rib_curve = rng.uniform(0.22, 0.38)
    gain, offset, gamma = rng.uniform(0.85, 1.1), rng.uniform(-0.05, 0.05), rng.uniform(0.8, 1.25)
    texture = common.smooth_noise(rng, size, 24)
    mottle = common.smooth_noise(rng, size, 6)
    noise_std = rng.uniform(0.005, 0.02)

    bottom = dome + 0.15  # below the domes; the diaphragm cuts the lungs before
    cavity = _superellipse(size, cx, (apex + bottom) / 2.0, half_thorax, (bottom - apex) / 2.0, 2.6)
    lateral = np.clip(np.abs(x - cx) / half_thorax, 0.0, 1.2)
    # Domes peak half-way out; the costophrenic recesses reach a little lower than the medial end.
    dome_y = dome - 0.08 * np.sin(np.pi * np.minimum(lateral, 1.0)) + 0.03 * lateral**6
    dome_y = dome_y - np.where(x < cx, dome_shift, 0.0)
    above_diaphragm = common.smoothstep_edge(y - dome_y, size)
    medi = common.smoothstep_edge(np.abs(x - cx) - mediastinum, size)
    heart = common.ellipse(size, heart_cx, heart_cy, _axis_for_width(heart_rx, heart_ry, heart_angle),
                           heart_ry, heart_angle)
    lungs = cavity * above_diaphragm * (1.0 - medi) * (1.0 - heart)

    body = _superellipse(size, cx, 0.2, 0.97, 1.15, 5.0)
    neck = common.smoothstep_edge(np.abs(x - cx) - 0.3, size) * (y < -0.5)
    body = np.maximum(body, neck)
    hila = np.exp(-(((np.abs(x - cx) - 0.2) ** 2) / 0.02 + ((y + 0.05) ** 2) / 0.05))
    density = 0.06 + 0.02 * mottle
    density = density * (1 - body) + (0.56 + 0.03 * mottle) * body
    lung_density = 0.18 + 0.10 * hila + 0.025 * texture
    density = density * (1 - lungs) + lung_density * lungs
    density = density + 0.06 * heart
    spine = common.smoothstep_edge(np.abs(x - cx) - 0.065, size)
    density = density + 0.12 * spine * (1.0 - 0.5 * heart)
    trachea = common.smoothstep_edge(np.abs(x - cx) - 0.03, size) * common.smoothstep_edge(y + 0.25, size)
    density = density - 0.06 * trachea
    ribs = np.zeros_like(x)
    for k in range(10):
        # Posterior ribs: leave the spine nearly level, then arc down towards the chest wall.
        centre = apex + 0.04 + k * rib_gap - 0.04 * lateral + rib_curve * lateral**2
        ribs = np.maximum(ribs, common.smoothstep_edge(np.abs(y - centre) - rib_width * (1 + 0.3 * lateral), size))
    density = density + 0.07 * ribs * cavity * (1.0 - spine) * (1.0 - 0.6 * heart) * (0.3 + 0.7 * above_diaphragm)
    clavicle = common.smoothstep_edge(np.abs(y - (apex + 0.02 - 0.25 * (np.abs(x - cx) - 0.45))) - 0.03, size)
    density = density + 0.1 * clavicle * body * (np.abs(x - cx) > 0.1) * (np.abs(x - cx) < 0.75)

    img = np.clip(gain * density + offset, 0.0, 1.0) ** gamma
    img = img + common.gaussian_noise(rng, img.shape, noise_std)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return np.repeat(img[:, :, None], 3, axis=2)


def _axis_for_width(half_width: float, ry: float, angle: float) -> float:
    """Semi-axis ``a`` such that the ellipse (a, ry) rotated by ``angle`` is ``2 * half_width`` wide."""
    c, s = np.cos(angle), np.sin(angle)
    return float(np.sqrt(max(half_width**2 - (ry * s) ** 2, 1e-4)) / abs(c))


def measure(image: np.ndarray) -> float:
    """Cardiothoracic ratio of a frontal chest radiograph (uint8 or float, [H, W] or [H, W, C])."""
    gray = common.as_float(image).mean(axis=2)
    h, w = gray.shape
    gray = ndimage.gaussian_filter(gray, 0.006 * h)
    lo, hi = np.percentile(gray, [2, 98])
    if hi <= lo:
        return float("nan")
    gray = np.clip((gray - lo) / (hi - lo), 0.0, 1.0)
    dark = gray < common.otsu_threshold(gray)
    labels, n = ndimage.label(dark)
    if n == 0:
        return float("nan")
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    sizes = ndimage.sum_labels(np.ones_like(gray), labels, index=np.arange(1, n + 1))
    sizes[border[border > 0] - 1] = 0
    order = np.argsort(sizes)[::-1][:2]
    if len(order) < 2 or sizes[order[1]] < 0.01 * h * w:
        return float("nan")
    a = ndimage.binary_fill_holes(labels == order[0] + 1)
    b = ndimage.binary_fill_holes(labels == order[1] + 1)
    if np.nonzero(a)[1].mean() > np.nonzero(b)[1].mean():
        a, b = b, a  # a: image-left lung (patient's right)
    cols = np.arange(w)
    rows_a, rows_b = a.any(axis=1), b.any(axis=1)
    left_edge = np.where(a, cols, w).min(axis=1)
    right_edge = np.where(b, cols, -1).max(axis=1)
    both = rows_a & rows_b
    thoracic = float((right_edge[both] - left_edge[both] + 1).max()) if both.any() else 0.0
    medial_a = np.where(a, cols, -1).max(axis=1)
    medial_b = np.where(b, cols, w).min(axis=1)
    # Heart level: below the hila (upper 40 % of the rows where both lungs are present) and
    # above the costophrenic recesses (lowest 15 %), where the medial border is no longer heart.
    both_rows = np.nonzero(both)[0]
    if both_rows.size == 0 or thoracic <= 0:
        return float("nan")
    span = both_rows[-1] - both_rows[0]
    lower = both_rows[(both_rows >= both_rows[0] + 0.4 * span) & (both_rows <= both_rows[-1] - 0.15 * span)]
    if lower.size == 0:
        return float("nan")
    # Clinical definition: the right and left heart borders' greatest distances, at any level.
    cardiac = float(medial_b[lower].max() - medial_a[lower].min() - 1)
    return cardiac / thoracic
