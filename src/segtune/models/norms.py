"""Owns the choice of normalisation layer for backbones: frozen BN, BN or GroupNorm."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

NORMS = ("auto", "frozen_bn", "bn", "gn")


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm over ``channels``: 32 groups, or the most of 16, 8, ... 1 that divides ``channels``."""
    # 32 groups as in "Group Normalization" (Wu & He); fall back to fewer for narrow layers (e.g. MobileNet's 16).
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def norm_layer_for(norm: str, *, pretrained: bool) -> Callable[[int], nn.Module]:
    """The normalisation layer class (or factory) for a backbone.

    ``auto`` is torchvision's rule: frozen BatchNorm statistics under pretrained weights (batches of
    2 images cannot estimate them), ordinary BatchNorm when training from scratch. ``gn`` is
    GroupNorm, which does not depend on the batch size at all (a good choice from scratch).
    """
    if norm == "auto":
        norm = "frozen_bn" if pretrained else "bn"
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return group_norm
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
