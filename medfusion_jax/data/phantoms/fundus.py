"""``phantom-fundus``: colour fundus photographs with a measurable cup-to-disc ratio.

Class names follow AIROGS: 0 = ``NRG`` (no referable glaucoma), 1 = ``RG`` (referable glaucoma).
The clinical sign is glaucomatous cupping: the vertical cup-to-disc ratio (vCDR) is drawn from
U(0.20, 0.40) for class 0 and U(0.70, 0.90) for class 1 (a vCDR of about 0.3 is typical of healthy
eyes, 0.7 and above is a common referral criterion); :data:`THRESHOLD` = 0.55 separates them.

What varies from image to image: left/right eye (disc left or right of the macula), position of the
field of view and of the disc, disc size and ellipticity, cup offset and horizontal ratio, the
vessel tree (four arcades with random curvature and branches), fundus pigmentation, brightness,
vignetting and illumination gradient, choroidal texture and sensor noise.

:func:`measure` reads the vCDR back from any RGB fundus photograph (phantom or real) with classical
image analysis on the green channel, where the disc and the pale cup stand out:

1. the optic disc is the brightest blob of the heavily smoothed green channel inside the field of
   view;
2. around it, the background level is the median of a window of half the image side, and the
   peak level the brightest (lightly smoothed) pixel within reach of the disc;
3. along a vertical profile (a band of a few columns), the disc is where the intensity exceeds
   25 % of the way from background to peak, the cup where it exceeds 76 % (the phantom's rim lies
   about half-way); the edges are the outermost threshold crossings, interpolated to sub-pixel
   precision, so vessels crossing the disc do not cut it;
4. vCDR = cup height / disc height, each measured along the column through its own centroid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medfusion_jax.data.phantoms import common

CLASS_NAMES = ("NRG", "RG")
FEATURE = "vertical cup-to-disc ratio"
THRESHOLD = 0.55
#: The class that a measurement above the threshold indicates.
POSITIVE_CLASS = 1
VCDR_RANGES = {0: (0.20, 0.40), 1: (0.70, 0.90)}

_RIM = np.float32([0.95, 0.62, 0.42])
_CUP = np.float32([1.0, 0.90, 0.78])
_VESSEL = np.float32([0.55, 0.33, 0.45])  # transmission of a fully opaque vessel per channel


def _vessel_paths(rng: np.random.Generator, disc: tuple[float, float], side: float, radius: float):
    """Polylines (normalised coordinates) with per-point opacity for the four arcades and branches."""
    paths = []
    for vertical in (-1.0, 1.0):  # superior, inferior
        for temporal in (True, False):
            heading = -side if temporal else side  # temporal arcades run towards the macula
            angle = np.arctan2(vertical, heading * (0.35 if temporal else 0.8))
            angle += rng.uniform(-0.25, 0.25)
            curl = -vertical * heading * rng.uniform(0.9, 1.6) * (1.0 if temporal else 0.5)
            n, step = 90, rng.uniform(0.010, 0.013)
            opacity0 = rng.uniform(0.55, 0.75) * (1.0 if temporal else 0.8)
            start = np.array(disc) + rng.uniform(-0.25, 0.25, 2) * radius
            main = _walk(rng, start, angle, curl, n, step, opacity0)
            paths.append(main)
            for _ in range(rng.integers(1, 3)):
                k = int(rng.integers(20, 60))
                base = main
                branch_angle = np.arctan2(*(base[0][k + 1] - base[0][k])[::-1])
                branch_angle += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0)
                paths.append(
                    _walk(rng, base[0][k], branch_angle, rng.uniform(-1.0, 1.0), 50, step,
                          base[1][k] * 0.7)
                )
    return paths


def _walk(rng, start, angle, curl, n, step, opacity0):
    turns = curl * step + rng.normal(0.0, 0.06, n)
    angles = angle + np.cumsum(turns)
    steps = step * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    points = start + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)[:-1]])
    opacity = opacity0 * np.linspace(1.0, 0.35, n)
    return points, opacity


def _render_vessels(paths, size: int) -> np.ndarray:
    """Opacity map in [0, 1]: splatted, densely resampled polylines blurred to vessel width."""
    sigma = max(0.55, 0.0045 * size)
    density = 2.0  # resampled points per pixel of path length
    xs, ys, ws = [], [], []
    for points, opacity in paths:
        seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
        t = np.concatenate([[0.0], np.cumsum(seg)])
        m = max(2, int(t[-1] * size / 2.0 * density))
        tt = np.linspace(0.0, t[-1], m)
        xs.append(np.interp(tt, t, points[:, 0]))
        ys.append(np.interp(tt, t, points[:, 1]))
        ws.append(np.interp(tt, t, opacity))
    canvas = common.splat(size, np.concatenate(xs), np.concatenate(ys),
                          np.concatenate(ws) * (np.sqrt(2 * np.pi) * sigma / density))
    return np.clip(ndimage.gaussian_filter(canvas, sigma), 0.0, 1.0)


def render(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """One fundus image, float32 ``[size, size, 3]`` in [0, 1]; see the module docstring."""
    y, x = common.grid(size)
    lo, hi = VCDR_RANGES[int(label)]
    vcdr = rng.uniform(lo, hi)
    side = float(rng.choice([-1.0, 1.0]))  # disc left or right of the macula (left/right eye)
    fov_c = [float(v) for v in rng.uniform(-0.03, 0.03, 2)]
    fov_r = rng.uniform(0.88, 0.96)
    disc_ry = rng.uniform(0.15, 0.19)
    disc_rx = disc_ry * rng.uniform(0.84, 0.95)
    disc = (fov_c[0] + side * rng.uniform(0.30, 0.40), fov_c[1] + rng.uniform(-0.08, 0.08))
    cup_ry = vcdr * disc_ry
    cup_rx = min(cup_ry * rng.uniform(0.75, 1.0), 0.92 * disc_rx)
    slack = max(disc_rx - cup_rx, 0.0) * 0.4
    cup = (disc[0] - side * rng.uniform(0.0, slack), disc[1] + rng.uniform(-0.3, 0.3) * (disc_ry - cup_ry))
    brightness = rng.uniform(0.75, 1.08)
    base = np.float32([rng.uniform(0.68, 0.85), rng.uniform(0.26, 0.35), rng.uniform(0.08, 0.16)])
    gradient_dir = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(0.0, 0.12)
    texture = common.smooth_noise(rng, size, 10)
    paths = _vessel_paths(rng, disc, side, disc_ry)
    macula = (disc[0] - side * rng.uniform(0.55, 0.65), disc[1] + rng.uniform(0.0, 0.08))
    noise_std = rng.uniform(0.004, 0.02)

    # Python floats keep the arithmetic in float32 (NumPy scalars would promote to float64).
    r2 = ((x - fov_c[0]) ** 2 + (y - fov_c[1]) ** 2) / fov_r**2
    illumination = (1.0 - 0.35 * r2) * (
        1.0 + gradient * (np.cos(gradient_dir) * x + np.sin(gradient_dir) * y)
    )
    img = base[None, None, :] * (illumination * (1.0 + 0.05 * texture))[:, :, None]
    fovea = np.exp(-((x - macula[0]) ** 2 + (y - macula[1]) ** 2) / (2 * 0.09**2))
    img = img * (1.0 - 0.35 * fovea)[:, :, None]
    disc_mask = common.ellipse(size, disc[0], disc[1], disc_rx, disc_ry)[:, :, None]
    cup_mask = common.ellipse(size, cup[0], cup[1], cup_rx, cup_ry)[:, :, None]
    img = img * (1 - disc_mask) + _RIM * disc_mask
    img = img * (1 - cup_mask) + _CUP * cup_mask
    # Vessels stay visible on the disc but fade over the rim and more over the pale cup, as on
    # real photographs (where they dive into the cup).
    vessels = _render_vessels(paths, size)[:, :, None] * (1.0 - 0.6 * disc_mask) * (1.0 - 0.6 * cup_mask)
    img = img * (1.0 - vessels * (1.0 - _VESSEL))
    img = img * brightness * common.smoothstep_edge(np.sqrt(r2) * fov_r - fov_r, size)[:, :, None]
    img = img + common.gaussian_noise(rng, img.shape, noise_std)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _outer_crossings(profile: np.ndarray, center: int, threshold: float, reach: int):
    """Sub-pixel positions of the outermost threshold crossings within ``reach`` of ``center``."""
    n = len(profile)
    lo, hi = max(0, center - reach), min(n - 1, center + reach)
    above = np.nonzero(profile[lo : hi + 1] >= threshold)[0] + lo
    if above.size == 0:
        return float(center), float(center)
    top, bottom = int(above[0]), int(above[-1])

    def interp(inside: int, outside: int) -> float:
        a, b = profile[outside], profile[inside]
        frac = (threshold - a) / (b - a) if b != a else 0.5
        return outside + frac * (inside - outside)

    top_pos = interp(top, top - 1) if top > 0 else float(top)
    bottom_pos = interp(bottom, bottom + 1) if bottom < n - 1 else float(bottom)
    return top_pos, bottom_pos


def _band_profile(channel: np.ndarray, column: int, half_width: int) -> np.ndarray:
    lo, hi = max(0, column - half_width), min(channel.shape[1], column + half_width + 1)
    return channel[:, lo:hi].mean(axis=1)


def measure(image: np.ndarray) -> float:
    """Vertical cup-to-disc ratio of a fundus photograph (uint8 or float, [H, W, 3])."""
    f = common.as_float(image)
    h, w = f.shape[:2]
    green = f[:, :, 1]
    fov = f.mean(axis=2) > 0.06
    fov = ndimage.binary_erosion(fov, iterations=max(1, round(0.02 * h)))
    if not fov.any():
        return float("nan")
    smooth = ndimage.gaussian_filter(green, 0.03 * h)
    cy, cx = np.unravel_index(np.argmax(np.where(fov, smooth, -np.inf)), smooth.shape)
    half = max(3, round(0.25 * h))
    window = (slice(max(0, cy - half), cy + half + 1), slice(max(0, cx - half), cx + half + 1))
    background = float(np.median(green[window][fov[window]]))
    band = max(1, round(0.01 * w))
    reach = max(3, round(0.16 * h))
    # The peak comes from the image, not from a band profile: averaging over columns would pull
    # a small cup down to the rim level and make the whole disc look like cup.
    lightly = ndimage.gaussian_filter(green, 0.004 * h)
    near = (slice(max(0, cy - reach), cy + reach + 1), slice(max(0, cx - reach), cx + reach + 1))
    peak = float(lightly[near].max())
    if peak <= background:
        return float("nan")
    t_disc = background + 0.25 * (peak - background)
    t_cup = background + 0.76 * (peak - background)
    local = np.zeros_like(green, bool)
    local[window] = True

    def centroid_column(threshold: float) -> int:
        labels, _ = ndimage.label((green >= threshold) & local)
        blob = labels == labels[cy, cx] if labels[cy, cx] else labels > 0
        columns = np.nonzero(blob)[1]
        return int(round(columns.mean())) if columns.size else int(cx)

    top, bottom = _outer_crossings(_band_profile(green, centroid_column(t_disc), band), cy, t_disc, reach)
    disc_height = bottom - top
    if disc_height <= 0:
        return float("nan")
    cup_profile = _band_profile(green, centroid_column(t_cup), band)
    centre = int(round((top + bottom) / 2))
    ctop, cbottom = _outer_crossings(cup_profile, centre, t_cup, max(1, int(disc_height / 2)))
    return float((cbottom - ctop) / disc_height)
