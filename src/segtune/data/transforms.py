"""Owns the augmentation pipelines, built on torchvision.transforms.v2 and tv_tensors."""

from __future__ import annotations

import torch
from torchvision.transforms import v2 as T


def build_transforms(*, train: bool, hflip_prob: float = 0.5) -> T.Compose:
    """The tutorial's pipeline: random horizontal flip in training, then uint8 to float in [0, 1].

    Boxes and masks are ``tv_tensors`` so v2 flips them with the image. ``SanitizeBoundingBoxes``
    drops any box a geometric transform made degenerate, with its label, mask and area.
    """
    steps: list[T.Transform] = []
    if train and hflip_prob > 0:
        steps.append(T.RandomHorizontalFlip(p=hflip_prob))
        steps.append(T.SanitizeBoundingBoxes(labels_getter=_sanitize_keys))
    steps.append(T.ToDtype(torch.float32, scale=True))
    steps.append(T.ToPureTensor())
    return T.Compose(steps)


def _sanitize_keys(inputs):  # the per-instance tensors that must be filtered with the boxes
    target = inputs[1]
    return tuple(target[k] for k in ("labels", "area", "iscrowd") if k in target)
