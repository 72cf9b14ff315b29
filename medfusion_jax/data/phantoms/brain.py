"""``phantom-brain``: T1-weighted brain MRI volumes with a measurable ventricle-to-brain ratio.

The first built-in *volume* data set (items are ``[size, size, size, 1]``, axes D, H, W = inferior ->
superior, anterior -> posterior, right -> left). Class 0 = ``normal ventricles``, class 1 =
``ventriculomegaly``. The clinical sign is the ventricle-to-brain ratio (VBR: the volume of the lateral
ventricles over the volume inside the brain surface, ventricles included), drawn from U(0.02, 0.045)
for class 0 and U(0.075, 0.12) for class 1; :data:`THRESHOLD` = 0.06 separates them (enlarged
ventricles, as in hydrocephalus or atrophy, raise the VBR).

Contrast as on a T1-weighted image: air dark, scalp fat bright, skull and cerebrospinal fluid (the rim
around the brain and the ventricles) dark, grey matter medium, white matter bright. What varies from
volume to volume: head size and position, brain shape, the ventricles' shape, left/right asymmetry and
position, the white-matter extent, intensity gain and offset, a smooth bias field, texture and noise.

:func:`measure` reads the VBR back from any such volume with classical image analysis: normalise by
the 2nd/99.5th percentiles; tissue is what lies above the midpoint of the dark (skull, CSF) and
grey-matter intensities, found by a three-class Otsu split of the head's voxels; the brain is the
largest tissue component after one erosion (which cuts the thin bridges to the scalp), grown back
within the tissue; its holes filled give the volume inside the brain surface. The ventricles are the
holes; their volume counts every voxel in and next to them by its CSF fraction (its intensity between
the CSF level and the median of the surrounding tissue), so that the partial voxels of the walls,
many at 32^3, are neither all counted nor all dropped.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from medfusion_jax.data.phantoms import common

CLASS_NAMES = ("normal ventricles", "ventriculomegaly")
FEATURE = "ventricle-to-brain ratio"
THRESHOLD = 0.06
POSITIVE_CLASS = 1
VBR_RANGES = {0: (0.02, 0.045), 1: (0.075, 0.12)}
#: Semi-axes (x, y, z) of one lateral ventricle before scaling, in normalised units.
_VENTRICLE_SHAPE = np.array([0.10, 0.30, 0.14])


@functools.lru_cache(maxsize=4)
def grid3d(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised voxel-centre coordinates ``(z, y, x)``, each ``[size, size, size]`` in (-1, 1)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    out = np.meshgrid(c, c, c, indexing="ij")
    for a in out:
        a.flags.writeable = False
    return tuple(out)


def ellipsoid(size: int, centre, radii, angle: float = 0.0) -> np.ndarray:
    """Anti-aliased filled ellipsoid; ``centre``/``radii`` as (x, y, z), rotated by ``angle`` about z."""
    z, y, x = grid3d(size)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    rho = np.sqrt((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2)
    return common.smoothstep_edge((rho - 1.0) * min(radii), size)


def smooth_noise_3d(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std 3-D noise with about ``cells`` blobs along each axis (the draw is size-free)."""
    coarse = rng.standard_normal((cells + 3,) * 3).astype(np.float32)
    field = ndimage.zoom(coarse, size / cells, order=1, mode="reflect", grid_mode=True)
    off = (field.shape[0] - size) // 2
    field = field[off:off + size, off:off + size, off:off + size]
    return (field - field.mean()) / (field.std() + 1e-6)


def render(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """One T1-weighted brain volume, float32 ``[size, size, size, 1]`` in [0, 1]."""
    lo, hi = VBR_RANGES[int(label)]
    vbr = rng.uniform(lo, hi)
    centre = np.array([rng.uniform(-0.04, 0.04), rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)])
    brain_r = np.array([rng.uniform(0.58, 0.66), rng.uniform(0.70, 0.78), rng.uniform(0.52, 0.60)])
    angle = rng.uniform(-0.12, 0.12)  # head rotation about the vertical axis
    csf_rim, skull, scalp = rng.uniform(0.05, 0.07), rng.uniform(0.09, 0.12), rng.uniform(0.07, 0.1)
    asym = rng.uniform(-0.12, 0.12)  # left/right ventricle volume asymmetry
    shape = _VENTRICLE_SHAPE * np.array([rng.uniform(0.85, 1.15), rng.uniform(0.9, 1.1), rng.uniform(0.85, 1.15)])
    vent_dy, vent_dz = rng.uniform(-0.06, 0.04), rng.uniform(0.0, 0.08)
    wm_scale = rng.uniform(0.72, 0.82)
    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-0.03, 0.03)
    texture = smooth_noise_3d(rng, size, 10)
    bias = smooth_noise_3d(rng, size, 3)
    noise_std = rng.uniform(0.01, 0.025)

    # The two ventricles' volumes sum to vbr times the brain's (an ellipsoid's volume is 4/3 pi abc).
    scale = (vbr * np.prod(brain_r) / (np.prod(shape) * 2.0)) ** (1.0 / 3.0)
    radii = [shape * scale * (1.0 + side * asym) ** (1.0 / 3.0) for side in (-1, 1)]
    c, s = np.cos(angle), np.sin(angle)
    ventricles = np.zeros((size,) * 3, np.float32)
    for side, r in zip((-1, 1), radii, strict=True):
        lateral = side * (r[0] * 1.15 + 0.03)  # beside the midline (septum pellucidum between them)
        offset_xy = np.array([c * lateral - s * vent_dy, s * lateral + c * vent_dy])
        ventricles = np.maximum(ventricles, ellipsoid(size, centre + np.array([*offset_xy, vent_dz]), r, angle))
    brain = ellipsoid(size, centre, brain_r, angle)
    white = ellipsoid(size, centre + np.array([0.0, 0.0, 0.05]), brain_r * wm_scale, angle)
    csf = ellipsoid(size, centre, brain_r + csf_rim, angle)
    bone = ellipsoid(size, centre, brain_r + csf_rim + skull, angle)
    head = ellipsoid(size, centre, brain_r + csf_rim + skull + scalp, angle)

    t1 = 0.02 * (1 - head) + 0.72 * (head - bone) + 0.08 * (bone - csf) + 0.14 * (csf - brain)
    tissue = 0.42 + 0.2 * white + 0.02 * texture
    t1 = t1 + brain * (tissue * (1 - ventricles) + 0.14 * ventricles)
    t1 = gain * t1 * (1.0 + 0.06 * bias) + offset
    t1 = t1 + common.gaussian_noise(rng, t1.shape, noise_std)
    return np.clip(t1, 0.0, 1.0).astype(np.float32)[..., None]


def _as_volume(volume: np.ndarray) -> np.ndarray:
    """``[D, H, W]`` or ``[D, H, W, C]`` uint8/float -> float32 ``[D, H, W]`` in [0, 1] (channel mean)."""
    arr = np.asarray(volume)
    if arr.ndim == 4:
        arr = arr.mean(axis=-1) if arr.dtype != np.uint8 else arr.astype(np.float32).mean(axis=-1) / 255.0
    elif arr.ndim == 3 and arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim != 3:
        raise ValueError(f"expected a volume [D, H, W] or [D, H, W, C], got shape {np.shape(volume)}")
    arr = arr.astype(np.float32)
    if arr.min() < -1e-3:  # model output in [-1, 1]
        arr = (arr + 1.0) / 2.0
    return np.clip(arr, 0.0, 1.0)


def _dark_and_grey_means(values: np.ndarray, bins: int = 64) -> tuple[float, float]:
    """Mean intensities of the two lower classes of a three-class Otsu split (maximal between-class
    variance). Inside the head those are the dark class (skull, CSF) and grey matter, whatever the
    share of white matter and scalp (a two-class split may fall between grey and white matter)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    w = np.concatenate([[0], np.cumsum(hist)]).astype(np.float64)
    m = np.concatenate([[0], np.cumsum(hist * centers)])
    total_w, total_m = w[-1], m[-1]
    best, split = -1.0, (1, 2)
    for a in range(1, bins - 1):
        for b in range(a + 1, bins):
            parts = ((w[a], m[a]), (w[b] - w[a], m[b] - m[a]), (total_w - w[b], total_m - m[b]))
            score = sum(mm * mm / ww for ww, mm in parts if ww > 0)
            if score > best:
                best, split = score, (a, b)
    a, b = split
    return float(m[a] / max(w[a], 1)), float((m[b] - m[a]) / max(w[b] - w[a], 1))


def measure(volume: np.ndarray) -> float:
    """Ventricle-to-brain ratio of a T1-weighted brain volume (NaN where no brain is found)."""
    v = _as_volume(volume)
    lo, hi = np.percentile(v, [2, 99.5])
    if hi <= lo:
        return float("nan")
    v = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    smooth = ndimage.gaussian_filter(v, 0.5)
    head = ndimage.binary_fill_holes(smooth > common.otsu_threshold(smooth))
    if head.sum() < 0.02 * v.size:
        return float("nan")
    # Inside the head: dark (skull, CSF) against tissue (grey and white matter, scalp).
    dark, grey = _dark_and_grey_means(smooth[head])
    tissue = head & (smooth > (dark + grey) / 2)
    core = ndimage.binary_erosion(tissue)
    labels, n = ndimage.label(core)
    if n == 0:
        return float("nan")
    sizes = ndimage.sum_labels(np.ones_like(v), labels, index=np.arange(1, n + 1))
    seed = labels == int(np.argmax(sizes)) + 1
    brain_tissue = ndimage.binary_propagation(seed, mask=tissue)
    inside = ndimage.binary_fill_holes(brain_tissue)
    if inside.sum() < 0.01 * v.size:
        return float("nan")
    holes = inside & ~brain_tissue
    if not holes.any():
        return 0.0
    # The ventricles' volume with partial voxels counted by their share of CSF: in and around the holes,
    # a voxel's CSF fraction is where its intensity lies between CSF and the surrounding wall's tissue.
    region = ndimage.binary_dilation(holes) & inside
    wall = ndimage.binary_dilation(region) & brain_tissue & ~region
    wall_level = float(np.median(v[wall])) if wall.any() else grey
    fraction = np.clip((wall_level - v[region]) / max(wall_level - dark, 1e-3), 0.0, 1.0)
    return float(fraction.sum() / inside.sum())
