"""Owns the score below which a torchvision detector drops detections itself (``roi_heads.score_thresh``).

Dropping them inside the model, before its mask or keypoint head runs and before masks are pasted to
image size, gives the same answer as filtering afterwards (class-wise NMS lets a box suppress only
lower-scoring ones) and saves most of a prediction's time at a high threshold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np


def inner_threshold(threshold: float) -> float:
    """The ``score_thresh`` that keeps scores ``>= threshold``: torchvision keeps scores ``> score_thresh``,
    so the next float32 below (scores are float32, and so is the threshold when compared with them)."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def has_min_score(model: Any) -> bool:
    return isinstance(getattr(getattr(model, "roi_heads", None), "score_thresh", None), float)


@contextlib.contextmanager
def min_score_inside(model: Any, threshold: float) -> Iterator[None]:
    """While inside, ``model`` drops detections scoring below ``threshold`` itself. A threshold at or below the
    model's own, or a model without ``roi_heads.score_thresh`` (an exported file), is left as it is."""
    if not has_min_score(model) or threshold <= model.roi_heads.score_thresh:
        yield
        return
    old = model.roi_heads.score_thresh
    model.roi_heads.score_thresh = inner_threshold(threshold)
    try:
        yield
    finally:
        model.roi_heads.score_thresh = old
