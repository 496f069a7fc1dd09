"""Owns the model builders: torchvision detectors with their heads replaced for the user's classes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d

from segtune.config import build_config, flatten
from segtune.errors import CheckpointError, ConfigError, WeightsError
from segtune.models.weights import load_pretrained, load_state_dict_file, official_entry, resolve_weights
from segtune.registry import Registry

logger = logging.getLogger(__name__)

MODELS: Registry = Registry("model")

_HEAD_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.")


def replace_heads(model: MaskRCNN, num_classes: int, mask_hidden: int = 256) -> None:
    """Give ``model`` new box and mask predictors for ``num_classes`` (background included).

    The tutorial's approach 1: everything else keeps its (pretrained) weights.
    """
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    in_channels = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(in_channels, mask_hidden, num_classes)


@MODELS.register()
def maskrcnn_resnet50_fpn(
    *,
    num_classes: int,
    weights: str | None = "DEFAULT",
    load_weights: bool = True,
    trainable_backbone_layers: int | None = None,
    mask_hidden: int = 256,
    progress: bool = True,
    **detector_kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN ResNet-50 FPN whose box and mask predictors fit ``num_classes``.

    Args:
        num_classes: classes including background (Penn-Fudan: 2).
        weights: ``DEFAULT`` / ``COCO_V1`` (torchvision's COCO weights through the hub cache),
            ``none`` (random initialisation, trainable BatchNorm), or a path to a state dict / checkpoint.
        load_weights: build the architecture that ``weights`` implies but load nothing (used when a
            segtune checkpoint will be loaded on top).
        trainable_backbone_layers: ResNet stages left trainable (0-5); default 3 with weights, 5 without.
        mask_hidden: hidden channels of the new mask predictor.
        **detector_kwargs: passed to ``torchvision.models.detection.MaskRCNN`` (``min_size``,
            ``rpn_post_nms_top_n_train``, ``box_batch_size_per_image``, ...).

    Raises:
        WeightsError: the weights cannot be found, fetched or loaded.
    """
    resolved = resolve_weights("maskrcnn_resnet50_fpn", weights, must_exist=load_weights)
    pretrained = resolved is not None
    if trainable_backbone_layers is None:
        trainable_backbone_layers = 3 if pretrained else 5
    # As torchvision does: frozen BatchNorm statistics under pretrained weights (batches of 2 cannot
    # estimate them), ordinary BatchNorm when training from scratch.
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=norm_layer, trainable_layers=trainable_backbone_layers
    )
    state: dict[str, torch.Tensor] | None = None
    source_classes = num_classes
    if load_weights and resolved is not None:
        if isinstance(resolved, Path):
            state = load_state_dict_file(resolved)
            key = "roi_heads.box_predictor.cls_score.weight"
            source_classes = state[key].shape[0] if key in state else num_classes
        else:
            state = load_pretrained(resolved, progress=progress)
            source_classes = len(resolved.meta["categories"])
    model = MaskRCNN(backbone, num_classes=source_classes, **detector_kwargs)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise WeightsError(f"--weights {weights}: does not fit maskrcnn_resnet50_fpn ({str(e).splitlines()[0]} ...)") from None
        logger.info("loaded weights %s", weights)
    entry = official_entry("maskrcnn_resnet50_fpn", resolved)
    if entry is not None and entry.name == "COCO_V1":
        # torchvision's COCO_V1 Mask R-CNN was trained with FrozenBatchNorm eps = 0; a model built on
        # it (now, or rebuilt from a checkpoint of a fine-tune) must use the same.
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = 0.0
    if source_classes != num_classes or state is None:
        replace_heads(model, num_classes, mask_hidden)
    return model


def build_model(
    name: str, *, num_classes: int, weights: str | None, load_weights: bool = True, **kwargs: Any
) -> nn.Module:
    """Build registered model ``name``; see each builder for its keyword arguments."""
    return MODELS.get(name)(num_classes=num_classes, weights=weights, load_weights=load_weights, **kwargs)


def model_kwargs(model_cfg: Any) -> dict[str, Any]:
    """Map a ``ModelConfig`` section to builder keyword arguments (the only place that reads it)."""
    return {
        "trainable_backbone_layers": model_cfg.trainable_backbone_layers,
        "mask_hidden": model_cfg.mask_hidden,
        "min_size": model_cfg.min_size,
        "max_size": model_cfg.max_size,
        "rpn_pre_nms_top_n_train": model_cfg.rpn_pre_nms_top_n_train,
        "rpn_post_nms_top_n_train": model_cfg.rpn_post_nms_top_n_train,
        "rpn_pre_nms_top_n_test": model_cfg.rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_test": model_cfg.rpn_post_nms_top_n_test,
        "box_batch_size_per_image": model_cfg.box_batch_size_per_image,
        "box_detections_per_img": model_cfg.box_detections_per_img,
    }


def build_from_config(model_cfg: Any, num_classes: int, *, load_weights: bool = True) -> nn.Module:
    return build_model(
        model_cfg.name, num_classes=num_classes, weights=model_cfg.weights, load_weights=load_weights,
        **model_kwargs(model_cfg),
    )


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[nn.Module, Any]:
    """Rebuild the model a segtune checkpoint was trained as and load its weights.

    Returns ``(model, config)`` with the model in eval mode on the CPU.

    Raises:
        CheckpointError: the config or the weights in the checkpoint do not build a model.
    """
    path = ckpt.get("path", "checkpoint")
    try:
        cfg = build_config(("checkpoint config", flatten(ckpt["config"])))
    except ConfigError as e:
        raise CheckpointError(f"{path}: its config does not load ({e})") from None
    model = build_from_config(cfg.model, num_classes=len(ckpt["classes"]) + 1, load_weights=False)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {cfg.model.name} ({str(e).splitlines()[0]})") from None
    return model.eval(), cfg
