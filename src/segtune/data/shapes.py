"""Owns the data doctor's sample of object shapes: an even, bounded sample of a data set's boxes.

Each row is ``[image file, box width, box height, image width, image height]`` in the image's own
pixels (crowd regions left out). The data doctor keeps at most :data:`SAMPLE` rows in its report (so
a cached report stays small for 100,000 images); the recipe fitting of
:mod:`segtune.engine.adapt` reads the rows of the training images, and ``segtune data check``
prints their sizes. Rows are taken at even strides in image order, chunk by chunk, so the sample is
the same whatever the number of worker processes that checked the images.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

#: Rows kept from each chunk of images the data doctor reads, and in the whole report: enough for
#: quantiles and for fitting anchors, small enough to keep the cached report light.
SAMPLE_PER_CHUNK = 1024
SAMPLE = 4096
#: Objects under this side (square root of the box area, in the image's pixels) are "small" (COCO's rule).
SMALL_SIDE = 32

Row = list[Any]


def box_rows(name: str, target: dict[str, Any], width: int, height: int) -> list[Row]:
    """The rows of one image's non-crowd boxes."""
    boxes = target["boxes"]
    if not len(boxes):
        return []
    keep = target["iscrowd"] == 0 if "iscrowd" in target else None
    if keep is not None:
        boxes = boxes[keep]
    sizes = (boxes[:, 2:] - boxes[:, :2]).tolist()
    return [[name, round(w, 1), round(h, 1), int(width), int(height)] for w, h in sizes]


def even_sample(rows: list[Row], n: int) -> list[Row]:
    """At most ``n`` of ``rows``, at even strides (all of them when there are no more than ``n``)."""
    if len(rows) <= n:
        return rows
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def describe(rows: list[Row]) -> str | None:
    """One line on the objects' sizes and shapes, for the data check's report; None without boxes."""
    sides = [math.sqrt(max(w, 0) * max(h, 0)) for _, w, h, _, _ in rows]
    ratios = [h / w for _, w, h, _, _ in rows if w > 0 and h > 0]
    if not sides or not ratios:
        return None
    small = sum(s < SMALL_SIDE for s in sides) / len(sides)
    relative = statistics.median(math.sqrt(max(w, 0) * max(h, 0)) / min(iw, ih) for _, w, h, iw, ih in rows)
    return (f"object sizes (square root of the box area, {len(sides)} boxes sampled): 10th percentile "
            f"{_quantile(sides, 0.1):.0f} px, median {statistics.median(sides):.0f} px, 90th percentile "
            f"{_quantile(sides, 0.9):.0f} px ({relative:.0%} of the shorter image side); under {SMALL_SIDE} px: "
            f"{small:.0%}; height / width: median {statistics.median(ratios):.2f}")
