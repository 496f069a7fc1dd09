"""Owns segtune's one box convention: a box is the pixel extent of what it encloses.

A mask whose pixels fill columns 2..9 and rows 4..6 has the box ``(x1, y1, x2, y2) = (2, 4, 10, 7)``:
the left/top edge of its first pixel to the right/bottom edge of its last, so its width (8) is the
number of columns it covers. This is COCO's convention (``toBbox`` of an RLE, and the ``bbox`` of
its annotation files), the one torchvision's flips and resizes keep (``x -> W - x`` maps the extent
of a mask onto the extent of the flipped mask), and the one every reader, transform, copy-paste,
the COCO exporter and evaluation's ground truth use. A one-pixel-wide object has width 1, never 0.

torchvision's ``ops.masks_to_boxes`` returns the index of the last pixel as ``x2``/``y2`` (a box one
pixel too narrow and too short in this convention), so :func:`mask_boxes` adds the missing pixel.
"""

from __future__ import annotations

import torch
from torchvision.ops import masks_to_boxes


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """The pixel-extent box (XYXY, float32[N, 4]) of each mask ``[N, H, W]``; all zeros for an empty mask."""
    plain = masks.as_subclass(torch.Tensor) if isinstance(masks, torch.Tensor) else torch.as_tensor(masks)
    boxes = torch.zeros((len(plain), 4), dtype=torch.float32)
    if len(plain) == 0:
        return boxes
    present = plain.flatten(1).any(1).bool()  # any() of uint8 is uint8, not a boolean index
    if present.any():
        inclusive = masks_to_boxes(plain[present]).to(torch.float32)
        inclusive[:, 2:] += 1  # last pixel's index -> its far edge
        boxes[present] = inclusive
    return boxes


def mask_areas(masks: torch.Tensor) -> torch.Tensor:
    """The number of pixels of each mask ``[N, H, W]`` (float32[N]): the area of data that has only masks."""
    plain = masks.as_subclass(torch.Tensor) if isinstance(masks, torch.Tensor) else torch.as_tensor(masks)
    return plain.flatten(1).bool().sum(1).to(torch.float32) if len(plain) else torch.zeros((0,))


def box_areas(boxes: torch.Tensor) -> torch.Tensor:
    """Width times height of XYXY ``boxes`` (the area of data that has only boxes), in their dtype."""
    plain = boxes.as_subclass(torch.Tensor)
    return (plain[:, 2] - plain[:, 0]) * (plain[:, 3] - plain[:, 1])


def is_solid(boxes: torch.Tensor) -> torch.Tensor:
    """Which XYXY ``boxes`` have positive width and height (torchvision's detectors reject the others)."""
    plain = boxes.as_subclass(torch.Tensor)
    return (plain[:, 2] > plain[:, 0]) & (plain[:, 3] > plain[:, 1])
