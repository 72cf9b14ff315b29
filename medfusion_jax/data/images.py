"""Image decoding, 8-bit conversion, resizing and cropping.

Everything that turns a file into the ``uint8 [H, W, C]`` array a source returns lives here:

* :func:`load_image` ``(path, image_size, channels, geometry)``: decode, convert to 8 bit, resize,
  crop, set the channel count. Raises :class:`~medfusion_jax.data.errors.ImageError` naming the file
  and the fault (zero-byte, truncated, not an image, too small, unsupported DICOM).
* :func:`decode` reads PNG / JPEG / TIFF (8 or 16 bit, grayscale or RGB, palette, alpha) with PIL
  and DICOM with pydicom, and returns an 8-bit PIL image in mode ``"L"`` or ``"RGB"``.
* :func:`probe` reads only the header (size, mode, bit depth) for ``describe``.
* :func:`is_image_file` tells image files from other files, by suffix or by the DICOM magic
  (``DICM`` at byte 128), since PACS exports often have no suffix.

Reference semantics (spec section 2.1): the reference opens images with PIL, converts them to RGB
and applies torchvision transforms to the PIL image. :func:`resize_shorter_side` is torchvision
``Resize(int)`` (shorter side to ``size``, longer side ``int(size * long / short)``, PIL bilinear,
which antialiases when downscaling); :func:`resize_exact` is ``Resize((size, size))``;
:func:`center_crop` is ``CenterCrop`` (offset ``int(round((h - size) / 2))``). Grayscale images are
resized in mode ``"L"`` and replicated afterwards, which gives the same bytes as the reference's
convert-then-resize (the three channels are identical and resized independently).

Bit depth: images with more than 8 bits (16-bit PNG/TIFF, ``"I"``/``"F"`` modes) are rescaled
linearly from their own [min, max] to [0, 255], the usual automatic window for X-ray exports that
carry no window; :func:`decode` reports this in its notes. DICOM uses the modality LUT (rescale
slope/intercept), then the file's first VOI window (Window Center/Width, DICOM PS3.3 C.11.2.1.2,
LINEAR, LINEAR_EXACT or SIGMOID), else its VOI LUT, else the min/max of the modality values;
MONOCHROME1 is inverted so that dense tissue is bright as in MONOCHROME2.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from medfusion_jax.data.errors import ImageError

#: Suffixes read with PIL.
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Suffixes read with pydicom (files without suffix are recognised by their magic).
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES

Geometry = Literal["shorter-side-crop", "stretch"]


@dataclasses.dataclass(frozen=True)
class Decoded:
    """An 8-bit image in mode ``"L"`` or ``"RGB"`` and notes about the conversion."""

    image: Image.Image
    notes: tuple[str, ...] = ()


def _has_dicom_magic(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return path.lower().endswith(DICOM_SUFFIXES) or (
        "." not in os.path.basename(path) and _has_dicom_magic(path)
    )


def is_image_file(path: str | os.PathLike) -> bool:
    """True for files with an image suffix and for suffix-less DICOM files."""
    path = os.fspath(path)
    if path.lower().endswith(IMAGE_SUFFIXES):
        return True
    return "." not in os.path.basename(path) and _has_dicom_magic(path)


def _rescale_to_uint8(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8), lo, hi
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8), lo, hi


def _check_file(path: str) -> None:
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except OSError as e:
        raise ImageError(path, f"cannot stat file ({e.strerror or e})") from None
    if size == 0:
        raise ImageError(path, "zero-byte file")


def _decode_pil(path: str) -> Decoded:
    try:
        img = Image.open(path)
        img.load()
    except UnidentifiedImageError:
        raise ImageError(path, "not a readable image (PIL cannot identify its format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(path, f"image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        text = str(e)
        if "truncated" in text:
            raise ImageError(path, f"truncated image file ({text})") from None
        raise ImageError(path, f"corrupt image file ({text})") from None
    mode = img.mode
    if mode in ("L", "RGB"):
        return Decoded(img)
    if mode in ("1", "LA"):
        return Decoded(img.convert("L"))
    if mode in ("P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return Decoded(img.convert("RGB"))
    if mode.startswith("I") or mode == "F":
        values = np.asarray(img)
        if values.ndim != 2:
            raise ImageError(path, f"unsupported image mode {mode!r} with shape {values.shape}")
        bits = "16-bit" if mode.startswith("I;16") else f"mode {mode}"
        arr, lo, hi = _rescale_to_uint8(values)
        note = f"{bits} image rescaled to 8 bits from its own range [{lo:g}, {hi:g}]"
        return Decoded(Image.fromarray(arr, "L"), (note,))
    raise ImageError(path, f"unsupported image mode {mode!r}")


def _modality_lut(arr: np.ndarray, ds) -> np.ndarray:
    try:
        from pydicom.pixels import apply_modality_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut
    return np.asarray(apply_modality_lut(arr, ds), np.float64)


def modality_values(ds) -> np.ndarray:
    """The stored values of a single-frame grayscale DICOM slice in its modality's units (CT: Hounsfield
    units through RescaleSlope/Intercept), float64 [rows, columns]; no windowing (volumes are
    normalised as a whole)."""
    arr = ds.pixel_array
    if arr.ndim != 2:
        raise ValueError(f"expected one grayscale frame, got pixel array shape {arr.shape}")
    return _modality_lut(arr, ds)


def _first(value) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2/3 VOI window to [0, 255]."""
    if function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        out = ((values - center) / width + 0.5) * 255.0
    elif width <= 1.0:  # LINEAR with the minimum width 1 is a threshold at center - 0.5
        out = np.where(values > center - 0.5, 255.0, 0.0)
    else:  # LINEAR (the default)
        out = ((values - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _decode_dicom(path: str) -> Decoded:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        raise ImageError(path, f"not a valid DICOM file ({e})") from None
    except (OSError, EOFError, ValueError, KeyError) as e:
        raise ImageError(path, f"corrupt or truncated DICOM file ({e})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError(path, "DICOM file has no pixel data")
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ImageError(
            path, f"cannot decode DICOM pixel data (transfer syntax {name}): {e}"
        ) from None
    except (ValueError, EOFError) as e:
        raise ImageError(path, f"corrupt or truncated DICOM pixel data ({e})") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(path, f"multi-frame DICOM ({frames} frames) is not a 2-D image")
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    notes: list[str] = []
    if samples == 3:
        # pydicom returns YBR data converted to RGB.
        if arr.dtype != np.uint8:
            arr, lo, hi = _rescale_to_uint8(arr)
            notes.append(f"RGB DICOM rescaled to 8 bits from [{lo:g}, {hi:g}]")
        return Decoded(Image.fromarray(np.ascontiguousarray(arr), "RGB"), tuple(notes))
    if samples != 1 or arr.ndim != 2:
        raise ImageError(path, f"unsupported DICOM layout ({samples} samples, shape {arr.shape})")
    values = _modality_lut(arr, ds)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center not in (None, "") and width not in (None, ""):
        c, w = _first(center), _first(width)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        out = _window(values, c, w, function)
        notes.append(f"DICOM window center {c:g} width {w:g} ({function})")
    elif "VOILUTSequence" in ds:
        try:
            from pydicom.pixels import apply_voi_lut
        except ImportError:  # pydicom 2.x
            from pydicom.pixel_data_handlers.util import apply_voi_lut
        out, lo, hi = _rescale_to_uint8(np.asarray(apply_voi_lut(arr, ds)))
        notes.append("DICOM VOI LUT applied")
    else:
        out, lo, hi = _rescale_to_uint8(values)
        notes.append(f"DICOM without window: rescaled from its own range [{lo:g}, {hi:g}]")
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
        notes.append("MONOCHROME1 inverted")
    return Decoded(Image.fromarray(out, "L"), tuple(notes))


def decode(path: str | os.PathLike) -> Decoded:
    """Reads any supported file into an 8-bit ``"L"`` or ``"RGB"`` PIL image."""
    path = os.fspath(path)
    _check_file(path)
    if is_dicom(path):
        return _decode_dicom(path)
    return _decode_pil(path)


def resized_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` output (width, height): shorter side to ``size``."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    """torchvision ``Resize(size)`` on a PIL image (bilinear, antialiased by PIL)."""
    new = resized_shape(img.width, img.height, size)
    if new == img.size:
        return img
    return img.resize(new, Image.BILINEAR)


def resize_exact(img: Image.Image, size: int) -> Image.Image:
    """torchvision ``Resize((size, size))`` on a PIL image (bilinear)."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision ``CenterCrop(size)`` for an image at least ``size`` on each side."""
    if img.size == (size, size):
        return img
    top = int(round((img.height - size) / 2.0))
    left = int(round((img.width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_array(img: Image.Image, channels: int) -> np.ndarray:
    """PIL image -> ``uint8 [H, W, channels]``; gray is replicated, RGB -> gray is ITU-R 601 luma."""
    if channels == 3:
        arr = np.asarray(img)
        if img.mode == "L":
            return np.repeat(arr[:, :, None], 3, axis=2)
        return arr
    if channels == 1:
        if img.mode != "L":
            img = img.convert("L")
        return np.asarray(img)[:, :, None]
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def fit(
    img: Image.Image,
    *,
    image_size: int,
    geometry: Geometry,
    allow_upscale: bool,
    path: str,
) -> Image.Image:
    """Applies the reference geometry to a decoded image, or raises if it is too small."""
    if not allow_upscale and min(img.size) < image_size:
        raise ImageError(
            path,
            f"image is {img.width}x{img.height}, too small for {image_size}x{image_size} "
            "(pass allow_upscale=True to enlarge it)",
        )
    if geometry == "stretch":
        return resize_exact(img, image_size)
    if geometry == "shorter-side-crop":
        return center_crop(resize_shorter_side(img, image_size), image_size)
    raise ValueError(f"unknown geometry {geometry!r}")


def load_image(
    path: str | os.PathLike,
    *,
    image_size: int,
    channels: int = 3,
    geometry: Geometry = "shorter-side-crop",
    allow_upscale: bool = False,
) -> np.ndarray:
    """Decodes ``path`` and returns ``uint8 [image_size, image_size, channels]``."""
    path = os.fspath(path)
    img = fit(
        decode(path).image,
        image_size=image_size,
        geometry=geometry,
        allow_upscale=allow_upscale,
        path=path,
    )
    return to_array(img, channels)


def probe(path: str | os.PathLike) -> dict:
    """Header facts for ``describe``: ``width``, ``height``, ``mode``, ``bits``, ``format``."""
    path = os.fspath(path)
    _check_file(path)
    if is_dicom(path):
        import pydicom
        from pydicom.errors import InvalidDicomError

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as e:
            raise ImageError(path, f"not a readable DICOM file ({e})") from None
        samples = int(getattr(ds, "SamplesPerPixel", 1))
        return {
            "width": int(getattr(ds, "Columns", 0)),
            "height": int(getattr(ds, "Rows", 0)),
            "mode": "RGB" if samples == 3 else str(getattr(ds, "PhotometricInterpretation", "")),
            "bits": int(getattr(ds, "BitsStored", 0)),
            "format": "DICOM",
        }
    try:
        with Image.open(path) as img:
            mode = img.mode
            bits = 16 if mode.startswith("I;16") else 32 if mode in ("I", "F") else 1 if mode == "1" else 8
            return {
                "width": img.width,
                "height": img.height,
                "mode": mode,
                "bits": bits,
                "format": img.format or "",
            }
    except UnidentifiedImageError:
        raise ImageError(path, "not a readable image (PIL cannot identify its format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(path, f"corrupt image header ({e})") from None
