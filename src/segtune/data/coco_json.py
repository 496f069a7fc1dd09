"""Owns the COCO JSON encodings shared by data conversion and evaluation: RLE masks and XYWH boxes.

It lives in ``data`` so that both the converter (``data``) and COCO scoring (``evaluation``, which may
import ``data`` but not the other way round) write masks and boxes the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from faster_coco_eval.core import mask as mask_utils


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """RLE-encode binary masks ``uint8/bool[N, H, W]`` as COCO JSON (``counts`` as str)."""
    if len(masks) == 0:
        return []
    array = np.asfortranarray(masks.to(torch.uint8).permute(1, 2, 0).cpu().numpy())
    rles = mask_utils.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def xyxy_to_xywh(boxes: torch.Tensor) -> list[list[float]]:
    """``float[N, 4]`` XYXY boxes as COCO's ``[x, y, width, height]`` lists."""
    b = boxes.to(torch.float64).cpu()
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], dim=1).tolist()
