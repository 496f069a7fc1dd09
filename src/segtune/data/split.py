"""Owns the reproducible train/test split of a data set's files, saved beside a run."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

from segtune.errors import DatasetError
from segtune.fileio import write_json

logger = logging.getLogger(__name__)


#: Below these, AP on the test split is mostly noise: one image more or less moves it by several points.
FEW_TEST_IMAGES, FEW_TEST_INSTANCES = 10, 20


def make_split(files: list[str], test_size: float, seed: int, max_test: int | None = None) -> dict[str, list[str]]:
    """Split ``files`` into ``{"train": [...], "test": [...]}`` with a seeded shuffle.

    ``test_size`` is a count, or a fraction of the files when below 1 (then at most ``max_test``
    images). A count that leaves no training image falls back to 20% with a warning.
    """
    n = len(files)
    if n < 2:
        raise DatasetError(f"the data set has {n} image(s); a train/test split needs at least 2")
    count = round(test_size * n) if test_size < 1 else int(test_size)
    if test_size < 1 and max_test is not None:
        count = min(count, max_test)
    if count >= n:
        fallback = max(1, round(0.2 * n))
        logger.warning("test size %s leaves no training image out of %d; using %d test images", test_size, n, fallback)
        count = fallback
    count = max(1, count)
    order = sorted(files)
    random.Random(seed).shuffle(order)
    return {"train": sorted(order[count:]), "test": sorted(order[:count])}


def choose_split(dataset: Any, data_cfg: Any) -> dict[str, Any]:
    """The split a run uses: the data set's own (``given_split``) unless ``data.split`` is ``random``,
    else a seeded random one (:func:`make_split`); ``source`` says which and why (also in ``split.json``)."""
    given = getattr(dataset, "given_split", None)
    if given and data_cfg.split == "auto":
        return {**given, "source": f"the data set's own ({dataset.given_split_source})"}
    split: dict[str, Any] = make_split(dataset.all_files, data_cfg.test_size, data_cfg.split_seed, data_cfg.test_max)
    why = "--split random" if given else "the data set has no split of its own"
    split["source"] = f"random, seed {data_cfg.split_seed} ({why})"
    return split


def warn_if_small(split: dict[str, list[str]], instance_counts: dict[str, int]) -> str | None:
    """A warning when the test split is too small for its AP to mean much (None when it is not)."""
    images = len(split["test"])
    instances = sum(instance_counts.get(name, 0) for name in split["test"])
    if images >= FEW_TEST_IMAGES and instances >= FEW_TEST_INSTANCES:
        return None
    message = (f"the test split has {images} images and {instances} instances: AP on so few is noise (one image "
               f"more or less moves it by several points); give more with --test-size, or a data set with a "
               f"validation split of its own")
    logger.warning("%s", message)
    return message


def save_split(path: str | os.PathLike, split: dict[str, list[str]]) -> None:
    write_json(path, split)


def load_split(path: str | os.PathLike) -> dict[str, list[str]]:
    path = Path(path)
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: split file not found") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "test")):
        raise DatasetError(f"{path}: a split file must hold 'train' and 'test' lists of file names")
    return split
