"""``phantom-histo``: H&E-stained colorectal cancer tiles with a measurable lymphocyte density.

Class names and indices follow CRC-DX in the reference: 0 = ``MSIH`` (microsatellite instability
high), 1 = ``nonMSIH``. The histological hallmark of MSI-H colorectal cancer is dense
tumour-infiltrating lymphocytes and lymphoid aggregates (Crohn's-like reaction), so class 0 tiles
carry 2 to 4 dense lymphoid aggregates plus many intra-epithelial lymphocytes, while class 1 tiles
carry only a few scattered lymphocytes. Both classes share the rest: pink fibrous stroma, tumour
epithelium with large pale (vesicular) elongated nuclei and gland lumina.

Colours come from the Beer-Lambert law with the Ruifrok-Johnston stain vectors (the ones of
``skimage.color.rgb2hed``): optical densities of haematoxylin and eosin are painted, then converted
to RGB. What varies from image to image: tissue layout (epithelium islands, lumina, fibre direction),
nucleus counts, sizes, shapes and orientations, stain intensity of each dye, illumination and noise.

:func:`measure` reads the lymphocyte density back from any H&E tile (phantom or real): colour
deconvolution with the same stain vectors, then the fraction of tissue pixels whose haematoxylin
optical density exceeds :data:`DENSE_CHROMATIN_OD`. Lymphocytes have small, round,
chromatin-dense nuclei that are much darker than vesicular tumour nuclei, and the aggregates stay
dark when a tile is downsampled, so the fraction works at 64x64 as well as at 512x512.
:data:`THRESHOLD` is the fraction above which a tile counts as lymphocyte-rich (class 0).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medfusion_jax.data.phantoms import common

CLASS_NAMES = ("MSIH", "nonMSIH")
FEATURE = "dense-chromatin (lymphocyte) area fraction"
THRESHOLD = 0.015
#: Lymphocyte-rich tiles are MSI-H, class 0.
POSITIVE_CLASS = 0
DENSE_CHROMATIN_OD = 0.9

# Ruifrok & Johnston (2001) stain OD vectors, normalised; the third completes the basis.
_H = np.float32([0.65, 0.70, 0.29])
_E = np.float32([0.07, 0.99, 0.11])
_H /= np.linalg.norm(_H)
_E /= np.linalg.norm(_E)
_R = np.cross(_H, _E)
_R /= np.linalg.norm(_R)
_STAINS = np.stack([_H, _E, _R])
_UNMIX = np.linalg.inv(_STAINS).astype(np.float32)

_LYMPHOCYTE_RADIUS = 0.024  # normalised units: ~8 um on a 512-pixel, 0.5 um/pixel tile


def _disc_kernel(radius_px: float) -> np.ndarray:
    r = int(np.ceil(radius_px + 1))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    return np.clip(radius_px + 0.5 - np.sqrt(xx**2 + yy**2), 0.0, 1.0)


def _fibres(rng: np.random.Generator, size: int) -> np.ndarray:
    """Anisotropic noise: collagen fibres running in one of four directions."""
    coarse = rng.standard_normal((8, 48)).astype(np.float32)
    mid = min(size, 96)
    field = ndimage.zoom(coarse, (mid / 8, mid / 48), order=3, grid_mode=True, mode="reflect")
    if mid != size:
        field = ndimage.zoom(field, size / mid, order=1, grid_mode=True, mode="nearest")
    field = field[:size, :size]
    field = np.rot90(field, int(rng.integers(4)))
    if rng.random() < 0.5:
        field = field.T
    return (field - field.mean()) / (field.std() + 1e-6)


def _sample_points(rng, mask_fn, n, spread=None, centre=None):
    """``n`` points inside ``mask_fn(x, y) > 0.5``: uniform, or Gaussian around ``centre``."""
    points = np.zeros((0, 2))
    for _ in range(20):
        if centre is None:
            cand = rng.uniform(-1.05, 1.05, (4 * n + 8, 2))
        else:
            cand = centre + rng.normal(0.0, spread, (4 * n + 8, 2))
        cand = cand[mask_fn(cand[:, 0], cand[:, 1]) > 0.5]
        points = np.concatenate([points, cand])[:n]
        if len(points) >= n:
            break
    return points


def render(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """One H&E tile, float32 ``[size, size, 3]`` in [0, 1]; see the module docstring."""
    y, x = common.grid(size)
    px = 2.0 / size
    h_gain, e_gain = rng.uniform(0.8, 1.2), rng.uniform(0.75, 1.25)
    illumination = rng.uniform(0.9, 1.0)
    noise_std = rng.uniform(0.005, 0.015)

    # Tissue layout: epithelium islands from thresholded smooth noise, lumina inside them.
    layout = common.smooth_noise(rng, size, 4)
    epi_level = rng.uniform(-0.1, 0.5)
    epithelium = np.clip((layout - epi_level) / (4 * px) + 0.5, 0.0, 1.0)
    n_lumina = int(rng.integers(1, 5))
    lumina = np.zeros_like(x)
    for _ in range(n_lumina):
        cx, cy = rng.uniform(-0.9, 0.9, 2)
        rx, ry = rng.uniform(0.04, 0.12), rng.uniform(0.03, 0.08)
        angle = rng.uniform(0, np.pi)
        lumina = np.maximum(lumina, common.ellipse(size, float(cx), float(cy), float(rx), float(ry), float(angle)))
    lumina *= epithelium

    def in_epithelium(xs, ys):
        ix = np.clip(((xs + 1) * size / 2).astype(int), 0, size - 1)
        iy = np.clip(((ys + 1) * size / 2).astype(int), 0, size - 1)
        return (layout[iy, ix] > epi_level).astype(np.float32)

    fibres = _fibres(rng, size)
    h_od = 0.03 + 0.04 * epithelium
    e_od = (0.15 + 0.06 * fibres) * (1 - epithelium) + 0.22 * epithelium

    # Tumour nuclei: large, elongated, pale (vesicular) with a darker membrane. All nuclei are
    # drawn at once on fixed-size patches and merged with a maximum.
    n_tumour = int(rng.integers(120, 220))
    centres = _sample_points(rng, in_epithelium, n_tumour)
    n = len(centres)
    rx, ry = rng.uniform(0.03, 0.045, n), rng.uniform(0.016, 0.024, n)
    angle = rng.uniform(0, np.pi, n)
    strength = rng.uniform(0.35, 0.55, n)
    half = int(np.ceil(0.045 / px)) + 1
    offsets = np.arange(-half, half + 1)
    ix = np.floor((centres[:, 0] + 1) / px).astype(int)[:, None, None] + offsets[None, None, :]
    iy = np.floor((centres[:, 1] + 1) / px).astype(int)[:, None, None] + offsets[None, :, None]
    dx = (ix + 0.5) * px - 1 - centres[:, 0, None, None]
    dy = (iy + 0.5) * px - 1 - centres[:, 1, None, None]
    c, s_ = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (c * dx + s_ * dy) / rx[:, None, None]
    v = (-s_ * dx + c * dy) / ry[:, None, None]
    rho = np.sqrt(u**2 + v**2)
    value = common.smoothstep_edge((rho - 1.0) * ry[:, None, None], size)
    value = value * strength[:, None, None] * (0.8 + 0.25 * np.minimum(rho, 1.0) ** 2)
    keep = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size) & (value > 0)
    ix, iy = np.broadcast_to(ix, value.shape)[keep], np.broadcast_to(iy, value.shape)[keep]
    nuclei = np.zeros((size, size), np.float32)
    np.maximum.at(nuclei, (iy, ix), value[keep].astype(np.float32))
    h_od = h_od + nuclei * (1 - lumina)

    # Lymphocytes: small round nuclei with dense chromatin.
    n_scattered = int(rng.integers(100, 200)) if label == 0 else int(rng.integers(3, 20))
    points = [rng.uniform(-1.0, 1.0, (n_scattered, 2))]
    if label == 0:
        for _ in range(int(rng.integers(2, 5))):
            centre = rng.uniform(-0.8, 0.8, 2)
            spread = rng.uniform(0.06, 0.12)
            count = int(1.5 * (spread / _LYMPHOCYTE_RADIUS) ** 2)
            points.append(centre + rng.normal(0.0, spread, (count, 2)))
    points = np.concatenate(points)
    radius_px = _LYMPHOCYTE_RADIUS / px * rng.uniform(0.85, 1.15)
    lymph = common.splat(size, points[:, 0], points[:, 1])
    lymph = np.clip(ndimage.convolve(lymph, _disc_kernel(radius_px), mode="constant"), 0.0, 1.0)
    lymph_od = rng.uniform(1.25, 1.5)
    h_od = h_od * (1 - lymph) + lymph_od * lymph
    e_od = e_od * (1 - 0.7 * lymph)

    # Lumina are empty: almost no stain.
    h_od = h_od * (1 - 0.9 * lumina)
    e_od = e_od * (1 - 0.9 * lumina)
    od = (h_gain * h_od)[:, :, None] * _H + (e_gain * e_od)[:, :, None] * _E
    img = illumination * np.power(np.float32(10.0), -od)
    img = img + common.gaussian_noise(rng, img.shape, noise_std)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def measure(image: np.ndarray) -> float:
    """Fraction of tissue pixels with dense chromatin (lymphocyte nuclei) in an H&E tile."""
    f = np.clip(common.as_float(image), 1.0 / 255.0, 1.0)
    od = -np.log10(f)
    tissue = od.sum(axis=2) > 0.15
    if not tissue.any():
        return float("nan")
    h = od @ _UNMIX[:, 0]
    return float(np.mean(h[tissue] > DENSE_CHROMATIN_OD))
