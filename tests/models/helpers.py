"""Shared pieces of the model tests: small CPU detector settings, a two-image batch of bright
rectangles, one checked training step, the tutorial's MobileNetV2 named config, and pretrained files
placed in a temporary hub cache."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from segtune.config import build_config, flatten, load_yaml
from segtune.configs import named_config

# Detector settings for CPU tests (TINY_MODEL's, as builder keyword arguments).
SMALL = {
    "min_size": 64, "max_size": 96, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 25, "box_batch_size_per_image": 32,
    "box_detections_per_img": 20,
}
#: Input size alone, for builders that take no RPN / RoI settings (RetinaNet, FCOS) or where they do not matter.
SMALL_INPUT = {"min_size": 64, "max_size": 96}
SCRATCH = {"weights": "none", "weights_backbone": "none"}


def make_batch(*, masks: bool = False, keypoints: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 64x80 images with one and two bright rectangles, and their targets."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for n in (1, 2):
        image = torch.rand(3, 64, 80, generator=g) * 0.2
        boxes = torch.tensor([[6.0, 8.0, 40.0, 44.0], [36.0, 20.0, 74.0, 58.0]][:n])
        target = {"boxes": boxes, "labels": torch.tensor([1, 1][:n])}
        mask = torch.zeros(n, 64, 80, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            image[:, y0:y1, x0:x1] = 0.9
            mask[i, y0:y1, x0:x1] = 1
        if masks:
            target["masks"] = mask
        if keypoints:
            t = torch.linspace(0.2, 0.8, keypoints)
            x = boxes[:, None, 0] + (boxes[:, None, 2] - boxes[:, None, 0]) * t
            y = boxes[:, None, 1] + (boxes[:, None, 3] - boxes[:, None, 1]) * t
            target["keypoints"] = torch.stack([x, y, torch.full_like(x, 2.0)], dim=-1)
        images.append(image)
        targets.append(target)
    return images, targets


def train_step(model: nn.Module, heads: list[str], **batch) -> dict[str, torch.Tensor]:
    """One forward/backward in training mode; the loss is finite and every named head gets a gradient."""
    model.train()
    losses = model(*make_batch(**batch))
    loss = sum(losses.values())
    assert math.isfinite(loss.item()), losses
    loss.backward()
    params = dict(model.named_parameters())
    for name in heads:
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    return losses


def tutorial_config(**extra):
    tree = flatten(load_yaml(named_config("tutorial_mobilenet_v2")))
    return build_config(("tutorial_mobilenet_v2", tree), ("test", extra))


def official_file(home: Path, weights) -> Path:
    """Where torch's hub cache under TORCH_HOME ``home`` keeps the official file of ``weights``."""
    return home / "hub" / "checkpoints" / os.path.basename(weights.url)


def place(home: Path, weights, state: dict[str, torch.Tensor]) -> Path:
    """Put ``state`` in the hub cache of ``home`` under the official file name of ``weights``."""
    target = official_file(home, weights)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return target
