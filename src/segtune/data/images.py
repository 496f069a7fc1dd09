"""Owns reading image and mask files: any PIL mode to RGB, header-only sizes, named errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segtune.errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Modes that hold one channel of more than 8 bits; PIL's convert("RGB") would clip them at 255.
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from None


def read_size(path: str | os.PathLike) -> tuple[int, int]:
    """Return ``(height, width)`` from the file header, without decoding the pixels."""
    with _open(Path(path)) as img:
        width, height = img.size
    return height, width


def _decode(path: Path) -> Image.Image:
    img = _open(path)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        img.close()
        raise DatasetError(f"{path}: image data is truncated or corrupt ({e})") from None
    return img


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to a ``uint8[H, W, 3]`` RGB array.

    Grayscale and palette images are expanded, alpha is dropped (the colour channels are kept as they are),
    and 16-bit or float images are scaled to 8 bits rather than clipped.
    """
    path = Path(path)
    img = _decode(path)
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
    img = _decode(path)
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
