"""Owns drawing predictions: masks, boxes, keypoints, class names and scores over the image (torchvision.utils)."""

from __future__ import annotations

import os

import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

from segtune.fileio import atomic_write

# A fixed palette so the same instance order gives the same colours in every picture.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
]


def draw(
    image: torch.Tensor, boxes: torch.Tensor, labels: list[str], masks: torch.Tensor | None = None,
    *, keypoints: torch.Tensor | None = None, skeleton: list[tuple[int, int]] | None = None,
    alpha: float = 0.45, width: int = 2, radius: int = 3,
) -> torch.Tensor:
    """Draw instances on ``image`` (uint8[3, H, W]) in the palette's colours, one colour per instance.

    Args:
        boxes: float[N, 4] XYXY pixels; ``labels`` one caption each.
        masks: bool[N, H, W], or None.
        keypoints: float[N, K, 3] (x, y, visibility) in pixels, or None; points with visibility 0
            (unlabelled) are not drawn, nor the skeleton lines that touch them.
        skeleton: 0-based keypoint index pairs joined by lines (COCO's 1-based ``skeleton`` minus 1).

    Returns:
        uint8[3, H, W].
    """
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(boxes))]
    out = image
    if masks is not None and len(masks):
        out = draw_segmentation_masks(out, masks.bool(), alpha=alpha, colors=colors)
    if len(boxes):
        out = draw_bounding_boxes(out, boxes, labels=labels, colors=colors, width=width)
    if keypoints is not None:
        # One call per instance so each person's points and skeleton take its box's colour.
        for points, color in zip(keypoints, colors):
            out = draw_keypoints(out, points[None, :, :2], connectivity=skeleton or None, colors=color,
                                 radius=radius, width=width, visibility=points[None, :, 2] > 0)
    return out


def save_png(image: torch.Tensor, path: str | os.PathLike) -> None:
    """Write uint8[3, H, W] to ``path`` as PNG, atomically."""
    pil = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    atomic_write(path, lambda f: pil.save(f, format="PNG"), binary=True)
