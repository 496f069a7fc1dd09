"""Owns batching for detection: images differ in size, so a batch is a tuple of lists."""

from __future__ import annotations

from typing import Any


def collate(batch: list[tuple[Any, dict[str, Any]]]) -> tuple[tuple[Any, ...], tuple[dict[str, Any], ...]]:
    images, targets = zip(*batch)
    return images, targets
