"""Pictures: masks tinted, boxes outlined, captions drawn; written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segtune.predict import draw, save_png
from segtune.predict.visualise import PALETTE


def test_draw_tints_masks_and_outlines_boxes(tmp_path: Path) -> None:
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    masks = torch.zeros(1, 40, 60, dtype=torch.bool)
    masks[0, 10:20, 10:30] = True
    boxes = torch.tensor([[5.0, 5.0, 50.0, 35.0]])
    out = draw(image, boxes, ["pedestrian 0.93"], masks, alpha=0.5)
    assert out.shape == image.shape and out.dtype == torch.uint8
    red = PALETTE[0][0]
    assert abs(int(out[0, 18, 27]) - red * 0.5) <= 1  # tinted inside the mask (away from the caption)
    assert int(out[:, 30, 40].sum()) == 0  # untouched outside mask and box lines
    assert tuple(out[:, 20, 5].tolist()) == PALETTE[0]  # the box's left edge
    path = tmp_path / "pic.png"
    save_png(out, path)
    assert np.array_equal(np.asarray(Image.open(path)), out.permute(1, 2, 0).numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["pic.png"]


def test_draw_with_no_detections_returns_the_image() -> None:
    image = torch.randint(0, 255, (3, 10, 12), dtype=torch.uint8)
    out = draw(image, torch.zeros((0, 4)), [], torch.zeros((0, 10, 12), dtype=torch.bool))
    assert torch.equal(out, image)
