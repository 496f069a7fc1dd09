"""Owns turning polygon, rectangle and circle annotations into binary masks, with one pixel convention.

The convention is COCO's (the rasteriser of faster_coco_eval / pycocotools): pixel ``(x, y)`` covers the
square ``[x, x + 1) x [y, y + 1)`` and is inside a shape when its centre ``(x + 0.5, y + 0.5)`` is. So the
rectangle with corners ``(2, 3)`` and ``(10, 8)`` covers columns 2..9 and rows 3..7, exactly
``mask[3:8, 2:10]``, and a data set annotated with polygons gives the same masks as the same shapes
drawn into a mask folder. (LabelMe's and Ultralytics' own drawing code fill the boundary pixels too, so
their masks can be one pixel larger on the right and bottom edges; evaluation is done the COCO way, so
training uses the COCO way too.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from faster_coco_eval.core import mask as mask_utils

#: The largest coordinate, in pixels, read from an annotation: beyond it a value is a broken annotation, not a
#: place in an image (the rasteriser walks every pixel of a polygon's edges, so 1e30 or infinity exhausts memory).
MAX_COORDINATE = 1e6


def is_coordinate(value: Any, limit: float = MAX_COORDINATE) -> bool:
    """True for a number (not a bool) that is finite and at most ``limit`` from 0."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and abs(value) <= limit


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """The union of ``polygons`` as a ``uint8[height, width]`` 0/1 mask.

    Args:
        polygons: flat ``[x1, y1, x2, y2, ...]`` lists in absolute pixel coordinates, each of at least
            3 points (6 numbers; the rasteriser reads a 4-number list as a box, so never pass one).
        height, width: the image size.
    """
    polygons = [[float(v) for v in p] for p in polygons]
    if not polygons:
        return np.zeros((height, width), dtype=np.uint8)
    if any(len(p) < 6 or len(p) % 2 for p in polygons):
        raise ValueError("each polygon needs at least 3 (x, y) points")
    rles = mask_utils.frPyObjects(polygons, height, width)
    rle = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
    return np.ascontiguousarray(mask_utils.decode(rle).reshape(height, width), dtype=np.uint8)


def rectangle_polygon(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """The corners of the axis-aligned rectangle with opposite corners ``(x0, y0)`` and ``(x1, y1)``."""
    left, right = min(x0, x1), max(x0, x1)
    top, bottom = min(y0, y1), max(y0, y1)
    return [left, top, right, top, right, bottom, left, bottom]


def circle_mask(cx: float, cy: float, radius: float, height: int, width: int) -> np.ndarray:
    """A filled circle as a ``uint8[height, width]`` mask: the pixels whose centres lie within ``radius``."""
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float64)[None, :] + 0.5
    return ((xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2).astype(np.uint8)
