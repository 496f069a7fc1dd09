"""Owns ``segtune data show``: a picture grid of data-set images with their ground-truth masks, boxes and classes.

Looking at a few images with their annotations drawn on is the quickest way to catch a mask folder
paired by the wrong name, a class map that swaps two classes or boxes in the wrong format.
"""

from __future__ import annotations

import colorsys
import logging
import os
import random
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from segtune.data.base import DetectionDataset, ProblemSink
from segtune.data.build import open_dataset
from segtune.errors import ConfigError, DatasetError
from segtune.fileio import atomic_write

logger = logging.getLogger(__name__)

_BACKGROUND = 24  # grey of the letterbox around images that are not square
_GAP = 2  # pixels between tiles


def _colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct, saturated colours: hues a golden-ratio step apart, so neighbours never look alike."""
    out = []
    for k in range(n):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.85, 1.0)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


def _tile(dataset: DetectionDataset, index: int, size: int) -> torch.Tensor:
    """Image ``index`` with its annotations drawn, fitted into a ``size`` x ``size`` uint8[3, S, S] tile."""
    array, target = dataset.load(index)
    image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    height, width = array.shape[:2]
    # Fit first, draw second: box lines and labels keep their width however large the image is.
    scale = min(size / height, size / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    image = F.resize(image, [new_h, new_w], antialias=True)
    boxes = target["boxes"].to(torch.float32).clone()
    boxes[:, 0::2] *= new_w / width
    boxes[:, 1::2] *= new_h / height
    colours = _colours(len(boxes))
    masks = target.get("masks")
    if masks is not None and len(masks):
        masks = F.resize(masks, [new_h, new_w], interpolation=InterpolationMode.NEAREST).bool()
        image = draw_segmentation_masks(image, masks, alpha=0.5, colors=colours)
    if len(boxes):
        names = [dataset.classes[int(k) - 1] if 1 <= int(k) <= len(dataset.classes) else str(int(k))
                 for k in target["labels"]]
        names = [f"{n} (crowd)" if int(c) else n for n, c in zip(names, target["iscrowd"])]
        image = draw_bounding_boxes(image, boxes, labels=names, colors=colours, width=1)
    tile = torch.full((3, size, size), _BACKGROUND, dtype=torch.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    tile[:, top:top + new_h, left:left + new_w] = image
    return tile


def save_grid(data_cfg_or_dataset: Any, out: str | os.PathLike, *, count: int = 16, columns: int = 4,
              seed: int = 0, tile_size: int = 256) -> Path:
    """Draw ``count`` images with their ground truth in a grid and write it to ``out`` as PNG (atomically).

    Each image is scaled to fit a ``tile_size`` square (letterboxed), then its masks, boxes and class
    names are drawn on, one colour per instance. Images that cannot be read are left out with a
    warning (``segtune data check`` names what is wrong with them).

    Args:
        data_cfg_or_dataset: a ``DataConfig`` section, or an opened :class:`DetectionDataset`.
        out: the PNG file to write (folders are created).
        count: how many images (fewer if the data set is smaller).
        columns: tiles per row.
        seed: which images: a seeded random choice, shown in data-set order; -1 = the first ``count``.
        tile_size: side of each square tile in pixels.

    Returns:
        The path written. The picture is ``cols * (tile_size + 2) + 2`` pixels wide and
        ``rows * (tile_size + 2) + 2`` high, with ``cols = min(columns, shown)`` (a single image is
        written as one ``tile_size`` square, without the border: make_grid's choice).

    Raises:
        ConfigError: ``count``, ``columns`` or ``tile_size`` is below 1.
        DatasetError: the data set cannot be opened, or none of the chosen images can be read.
    """
    for name, value in (("count", count), ("columns", columns), ("tile_size", tile_size)):
        if value < 1:
            raise ConfigError(f"data show: --{name.replace('_', '-')} must be at least 1, got {value}")
    if isinstance(data_cfg_or_dataset, DetectionDataset):
        dataset = data_cfg_or_dataset
    else:
        # Collect the reader's complaints rather than stop on them: a picture of the rest still helps.
        sink = ProblemSink(collect=True)
        dataset = open_dataset(data_cfg_or_dataset, keep_crowd=True, sink=sink)
        if sink.problems:
            logger.warning("%s: %d problem(s) found while reading (e.g. %s); run 'segtune data check' for all",
                           dataset.root, len(sink.problems), sink.problems[0])
    n = len(dataset)
    chosen = list(range(min(count, n))) if seed == -1 else sorted(random.Random(seed).sample(range(n), min(count, n)))
    tiles = []
    for i in chosen:
        try:
            tiles.append(_tile(dataset, i, tile_size))
        except DatasetError as e:
            logger.warning("left out of the grid: %s", e)
    if not tiles:
        raise DatasetError(f"{dataset.root}: none of the {len(chosen)} chosen images could be read "
                           "(run 'segtune data check' to see why)")
    grid = make_grid(torch.stack(tiles), nrow=columns, padding=_GAP, pad_value=255)
    picture = Image.fromarray(grid.permute(1, 2, 0).numpy())
    return atomic_write(out, lambda f: picture.save(f, format="PNG"), binary=True)
