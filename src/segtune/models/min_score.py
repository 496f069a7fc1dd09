"""Owns the score below which a model drops detections itself, set for one call and put back after.

Dropping them inside the model (a family that declares such a threshold, :meth:`ModelFamily.min_score`:
torchvision's R-CNNs, before their mask or keypoint head runs and before masks are pasted to image size)
gives the same answer as filtering afterwards (class-wise NMS lets a box suppress only lower-scoring
ones) and saves most of a prediction's time at a high threshold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from segtune.models.family import family_of, unwrap


def inner_threshold(threshold: float) -> float:
    """The ``score_thresh`` that keeps scores ``>= threshold``: torchvision keeps scores ``> score_thresh``,
    so the next float32 below (scores are float32, and so is the threshold when compared with them)."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def has_min_score(model: Any) -> bool:
    """Whether ``model``'s family declares a score threshold inside it that can be set."""
    return family_of(model).min_score(unwrap(model)) is not None


def set_min_score(model: Any, threshold: float) -> None:
    """Make ``model`` keep only detections scoring ``>= threshold`` itself (its family must declare one)."""
    model = unwrap(model)
    family_of(model).set_min_score(model, inner_threshold(threshold))


@contextlib.contextmanager
def min_score_inside(model: Any, threshold: float) -> Iterator[None]:
    """While inside, ``model`` drops detections scoring below ``threshold`` itself. A threshold at or below the
    model's own, or a model whose family declares none (an exported file), is left as it is."""
    model = unwrap(model)
    family = family_of(model)
    old = family.min_score(model)
    if old is None or threshold <= old:
        yield
        return
    family.set_min_score(model, inner_threshold(threshold))
    try:
        yield
    finally:
        family.set_min_score(model, old)

