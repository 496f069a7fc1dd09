"""Owns the label statistics of a split: instances per class and per image, box sizes and shapes, and
where object centres fall (what Ultralytics draws in ``labels.jpg``), from the annotations alone.

Read with :meth:`DetectionDataset.annotation` (no image is decoded); a split of more than
:data:`MAX_IMAGES` images is sampled evenly, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: Most images whose annotations are read for the statistics of one split.
MAX_IMAGES = 5000


@dataclass
class LabelStats:
    """The statistics of one split: plain lists, in the data set's class order."""

    images: int = 0
    sampled: int = 0
    per_class: list[int] = field(default_factory=list)
    per_image: list[int] = field(default_factory=list)
    box_sizes: list[float] = field(default_factory=list)   # sqrt(width * height) in pixels
    aspect_ratios: list[float] = field(default_factory=list)  # height / width
    centres_x: list[float] = field(default_factory=list)  # box centre / image width
    centres_y: list[float] = field(default_factory=list)

    @property
    def instances(self) -> int:
        return sum(self.per_class)


def label_stats(dataset: Any, classes: list[str], *, max_images: int = MAX_IMAGES) -> LabelStats:
    """The statistics of ``dataset`` (crowd regions left out, as training leaves them)."""
    n = len(dataset)
    stats = LabelStats(images=n, per_class=[0] * len(classes))
    step = max(1, math.ceil(n / max_images))
    for i in range(0, n, step):
        height, width, target = dataset.annotation(i)
        boxes = target["boxes"]
        keep = target["iscrowd"] == 0
        labels = target["labels"][keep].tolist()
        stats.sampled += 1
        stats.per_image.append(len(labels))
        for label in labels:
            if 1 <= label <= len(classes):
                stats.per_class[label - 1] += 1
        for x0, y0, x1, y1 in boxes[keep].tolist():
            w, h = max(0.0, x1 - x0), max(0.0, y1 - y0)
            stats.box_sizes.append(math.sqrt(w * h))
            if w > 0 and h > 0:
                stats.aspect_ratios.append(h / w)
            stats.centres_x.append(min(1.0, max(0.0, (x0 + x1) / 2 / max(width, 1))))
            stats.centres_y.append(min(1.0, max(0.0, (y0 + y1) / 2 / max(height, 1))))
    return stats
