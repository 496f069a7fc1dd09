"""Owns images of extreme aspect ratio: padded before the model sees them, its answers cut back after.

A detector that resizes its input by the shorter side within a cap on the longer one (torchvision's
``GeneralizedRCNNTransform``: scale = min(min_size / short, max_size / long)) makes a 4 x 3000 image 0 pixels
high and fails inside its resize. Padding the shorter side with black to at least 1 / :data:`MAX_ASPECT` of
the longer one keeps every image at a size the model can take (16 px at the default 512-px cap); the
detections in the padding are dropped and the rest clipped to the image, so the answers are the image's own.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

#: The most elongated image (longer side / shorter side) given to the model as it is.
MAX_ASPECT = 32


def pad_to_aspect(image: torch.Tensor) -> torch.Tensor:
    """``image`` (``[3, H, W]``) padded on the bottom or right to an aspect ratio of at most MAX_ASPECT."""
    h, w = image.shape[-2:]
    need = -(-max(h, w) // MAX_ASPECT)  # ceil
    if min(h, w) >= need:
        return image
    return F.pad(image, (0, max(0, need - w), 0, max(0, need - h)))


def cut_to_image(out: dict[str, torch.Tensor], height: int, width: int) -> dict[str, torch.Tensor]:
    """The answers for a padded image cut back to the image's ``height`` x ``width``: boxes clipped, those
    left without area (in the padding) dropped with everything else of theirs, masks cropped."""
    boxes = out["boxes"].clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    cut = {k: v[keep] if isinstance(v, torch.Tensor) and v.dim() and len(v) == len(keep) else v
           for k, v in out.items()}
    cut["boxes"] = boxes[keep]
    if "masks" in cut:
        cut["masks"] = cut["masks"][..., :height, :width]
    return cut
