"""Owns reading image and mask files: any PIL mode to RGB, EXIF orientation, header-only sizes, named errors.

Photos are read as they are shown: the EXIF orientation tag (every phone photo has one) is applied on
load, and header-only sizes are those of the turned image, because labelling tools (LabelMe, CVAT,
Roboflow) annotate the image after turning it. Mask files are read as stored.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segtune.errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Modes that hold one channel of more than 8 bits; PIL's convert("RGB") would clip them at 255.
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


#: The EXIF tag that says how to turn the stored pixels to show the photo upright.
EXIF_ORIENTATION = 0x0112
#: Orientations that turn the image by 90 degrees (so height and width swap).
_QUARTER_TURNS = (5, 6, 7, 8)

Source = str | os.PathLike | bytes

#: The most pixels segtune decodes from one image, unless SEGTUNE_MAX_IMAGE_PIXELS says otherwise
#: (16384 x 16384; an RGB image that size takes 0.8 GB decoded).
DEFAULT_MAX_PIXELS = 16384 * 16384
MAX_PIXELS_VARIABLE = "SEGTUNE_MAX_IMAGE_PIXELS"
# segtune checks the size from the header itself (_checked) and names the file; Pillow's own check would
# raise its DecompressionBombError, or warn, at a limit of its choosing.
Image.MAX_IMAGE_PIXELS = None


def max_pixels() -> int:
    """The pixel limit: ``$SEGTUNE_MAX_IMAGE_PIXELS`` when it is a positive integer, else DEFAULT_MAX_PIXELS."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_PIXELS


def _checked(img: Image.Image, name: object) -> Image.Image:
    """``img`` if its header's size is within :func:`max_pixels`, else a DatasetError before any decoding."""
    width, height = img.size
    limit = max_pixels()
    if width * height > limit:
        img.close()
        raise DatasetError(f"{name}: {width} x {height} pixels is more than segtune decodes from one image "
                           f"({limit} pixels; set {MAX_PIXELS_VARIABLE} to allow more)")
    return img


#: What Pillow raises, besides OSError, on a header it cannot parse (a PNG whose IHDR chunk is cut short: ValueError).
_HEADER_ERRORS = (ValueError, SyntaxError, EOFError)


def _open_bytes(data: bytes, name: str | None) -> Image.Image:
    try:
        return _checked(Image.open(io.BytesIO(data)), name or "embedded image")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, *_HEADER_ERRORS) as e:
        raise DatasetError(f"{name or 'embedded image'}: not a readable image ({e})") from None


def _open_path(path: Path) -> Image.Image:
    try:
        return _checked(Image.open(path), path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, *_HEADER_ERRORS) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from None


def orientation(img: Image.Image) -> int:
    """The EXIF orientation of an opened image (1 = upright, also when it has none or it cannot be read)."""
    try:
        if img.format == "TIFF":
            value = img.tag_v2.get(EXIF_ORIENTATION, 1)  # in the TIFF header itself
        else:
            # The EXIF block as read with the header (JPEG's APP1, a PNG eXIf chunk before the pixels);
            # img.getexif() would decode a PNG's pixels to look behind them, which header reads must not.
            raw = img.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):  # malformed EXIF: the pixels as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_size(source: Source, *, name: str | None = None) -> tuple[int, int]:
    """``(height, width)`` of the image as shown (EXIF orientation applied), from the header only.

    ``source`` is a file path or the file's bytes (``name`` then names it in errors).
    """
    with _source(source, name) as img:
        width, height = img.size
        turned = orientation(img) in _QUARTER_TURNS
    return (width, height) if turned else (height, width)


def _source(source: Source, name: str | None) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        return _open_bytes(bytes(source), name)
    return _open_path(Path(source))


def _decode(source: Source, name: str | None = None) -> Image.Image:
    img = _source(source, name)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        img.close()
        raise DatasetError(f"{name or source}: image data is truncated or corrupt ({e})") from None
    return img


def load_rgb(source: Source, *, name: str | None = None) -> np.ndarray:
    """Decode an image (a file path, or the file's bytes named ``name``) to a ``uint8[H, W, 3]`` RGB array.

    The EXIF orientation is applied (the photo as shown). Grayscale and palette images are expanded,
    alpha is dropped (the colour channels are kept as they are), and 16-bit or float images are
    scaled to 8 bits rather than clipped.
    """
    img = _decode(source, name)
    if orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max(initial=0)), 1.0)
        gray = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_instance_mask(path: str | os.PathLike) -> np.ndarray:
    """Decode a mask file to an ``int64[H, W]`` array of instance ids (0 = background).

    Single-channel masks (8- or 16-bit, palette indices) are used as they are. An RGB mask whose
    channels are all equal is read as grey; otherwise each distinct colour is one instance id.
    """
    path = Path(path)
    img = _decode(path)  # as stored: masks carry no orientation of their own
    if img.mode in ("RGB", "RGBA"):
        arr = np.asarray(img.convert("RGB"), dtype=np.int64)
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            return arr[..., 0].copy()
        return (arr[..., 0] << 16) | (arr[..., 1] << 8) | arr[..., 2]
    if img.mode == "LA":
        img = img.getchannel(0)
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise DatasetError(f"{path}: mask must have one channel (instance ids), got mode {img.mode}")
    return arr.astype(np.int64)
