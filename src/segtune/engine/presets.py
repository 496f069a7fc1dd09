"""Owns choosing a recipe: applying a named preset under the user's settings, and ``auto``."""

from __future__ import annotations

import logging
from typing import Any

import torch

from segtune.config import Config, build_config, preset_layer
from segtune.models import default_weights, weights_available

logger = logging.getLogger("segtune.train")

Layer = tuple[str, dict[str, Any]]


def choose_preset(device: str = "auto", model: str = "maskrcnn_resnet50_fpn") -> str:
    """``tutorial`` when a GPU or the COCO weights are at hand, else ``cpu-quick``; logs why.

    Looking for the weights means the hub cache, then one download attempt (which fails at once
    with no network).
    """
    if device != "cpu" and torch.cuda.is_available():
        logger.info("preset auto -> tutorial (a GPU is available)")
        return "tutorial"
    weights = default_weights(model)
    if weights is None:
        logger.warning("preset auto -> cpu-quick: no GPU, and %s has no whole-model pretrained weights, so this "
                       "runs a short schedule on small images.", model)
        return "cpu-quick"
    if weights_available(weights):
        logger.info("preset auto -> tutorial (COCO weights %s are available; on CPU this takes hours)", weights)
        return "tutorial"
    logger.warning(
        "preset auto -> cpu-quick: no GPU and the COCO-pretrained weights could not be loaded or "
        "downloaded, so this runs a short schedule on small images from random initialisation."
    )
    return "cpu-quick"


def configure(*layers: Layer) -> Config:
    """Build a :class:`Config` from user layers (lowest precedence first), with the preset they name under them.

    The preset is the last ``train.preset`` any layer sets (default ``tutorial``); ``auto`` is
    resolved by :func:`choose_preset`.
    """
    preset, device, model = "tutorial", "auto", "maskrcnn_resnet50_fpn"
    for _, values in layers:
        preset = values.get("train.preset", preset)
        device = values.get("train.device", device)
        model = values.get("model.name", model)
    if preset == "auto":
        preset = choose_preset(str(device), str(model))
    stripped = [(src, {k: v for k, v in values.items() if k != "train.preset"}) for src, values in layers]
    return build_config(preset_layer(str(preset)), *stripped)
