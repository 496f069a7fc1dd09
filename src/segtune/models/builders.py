"""Owns building registered models: weights, normalisation, frozen stages, and heads for the user's classes.

Every detector goes through :func:`build_detector`: resolve the whole-model or backbone-only weights,
pick the backbone's normalisation, build the architecture, load the weights, then give it output
layers for the user's classes (and keypoints). The architectures themselves are registered in
``segtune.models.zoo`` (torchvision's detectors) and ``segtune.models.backbones`` (custom backbones).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights
from torchvision.ops import FrozenBatchNorm2d

from segtune.checkpoint import checkpoint_config
from segtune.errors import CheckpointError, ConfigError, WeightsError
from segtune.models.backbones import trainable_stages
from segtune.models.heads import (
    mask_hidden_of, num_classes_of, num_keypoints_of, replace_heads, replace_keypoint_head, sizes_in_state,
)
from segtune.models.norms import norm_layer_for
from segtune.models.spec import MODELS, ModelSpec
from segtune.models.transfer import parse_coco_mapping, transfer_head_rows
from segtune.models.weights import load_weights as load_weights_state
from segtune.models.weights import official_entry, resolve_backbone_weights, resolve_weights

logger = logging.getLogger(__name__)

#: torchvision weights trained with FrozenBatchNorm2d eps = 0 (torchvision calls ``overwrite_eps(model,
#: 0.0)`` after loading them). A model built on them -- now, or rebuilt from a checkpoint of a
#: fine-tune that started from them -- must use the same eps or its outputs drift.
FROZEN_BN_EPS_ZERO = {
    ("fasterrcnn_resnet50_fpn", "COCO_V1"), ("maskrcnn_resnet50_fpn", "COCO_V1"),
    ("keypointrcnn_resnet50_fpn", "COCO_V1"), ("retinanet_resnet50_fpn", "COCO_V1"),
}


@dataclass(frozen=True)
class Recipe:
    """How one detector is put together around a torchvision classification backbone.

    Attributes:
        name: the registered model name (for messages).
        weights_name: torchvision model name whose weights enum holds the whole-model weights, or
            None for a composed model without any.
        backbone_name: torchvision classification model the backbone is cut from; its weights enum
            gives ``--weights-backbone``.
        max_trainable_layers: backbone stages there are to train (ResNet 5, MobileNetV3 6).
        make: ``make(body, *, trainable_layers, num_classes, num_keypoints, **detector_kwargs)``
            builds the detector around ``body``, the classification model (its weights loaded).
        defaults: detector keyword arguments this model was trained with where they differ from
            torchvision's class defaults (e.g. the 320 px MobileNet's ``min_size``).
    """

    name: str
    weights_name: str | None
    backbone_name: str
    max_trainable_layers: int
    make: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)


def _whole_model_weights(recipe: Recipe, weights: str | None, must_exist: bool) -> WeightsEnum | Path | None:
    if recipe.weights_name is not None:
        return resolve_weights(recipe.weights_name, weights, must_exist=must_exist)
    if weights is None or weights in ("none", "None", ""):
        return None
    if weights == "DEFAULT":
        # The config default; a composed model has no whole-model weights, so it means "none" here
        # and the backbone weights apply.
        logger.info("%s has no whole-model pretrained weights; using backbone weights only", recipe.name)
        return None
    path = Path(weights).expanduser()
    if path.is_file() or not must_exist:
        return path
    raise WeightsError(f"--weights '{weights}': {recipe.name} has no torchvision weights (DEFAULT means none "
                       f"for it), and no such file exists")


def _trainable_layers(recipe: Recipe, requested: int | None, pretrained: bool) -> int:
    return trainable_stages(requested, recipe.max_trainable_layers, pretrained=pretrained, name=recipe.backbone_name)


def _load(model: nn.Module, state: dict[str, torch.Tensor], what: str, target: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{what}: does not fit {target} ({str(e).splitlines()[0]} ...)") from None


def build_detector(
    recipe: Recipe,
    *,
    num_classes: int,
    weights: str | None,
    load_weights: bool = True,
    weights_backbone: str | None = None,
    norm: str = "auto",
    trainable_backbone_layers: int | None = None,
    num_keypoints: int | None = None,
    head_rows: list[int] | None = None,
    mask_hidden: int = 256,
    progress: bool = True,
    **detector_kwargs: Any,
) -> nn.Module:
    """Build ``recipe``'s detector with output layers for ``num_classes`` (and ``num_keypoints``).

    Args:
        num_classes: classes including the background.
        weights: whole-model weights: ``DEFAULT``, an entry name (``COCO_V1``), ``none``, or a
            file (torchvision's, or a segtune checkpoint / state dict). All of it is loaded, then
            the class-specific output layers are replaced where their size differs (their rows can
            be started from COCO classes with ``head_rows``).
        load_weights: False builds the architecture the weights imply (normalisation, frozen stages,
            eps) and loads nothing: a segtune checkpoint goes on top; nothing is read or downloaded.
        weights_backbone: backbone-only weights when ``weights`` is none: ``DEFAULT``
            (IMAGENET1K_V1), an entry name of the classification model, ``none``, or a file.
        norm: backbone normalisation (``segtune.models.norms``): ``auto`` is frozen BatchNorm under
            pretrained weights (whole-model or backbone), BatchNorm without.
        trainable_backbone_layers: backbone stages that train; default 3 when pretrained, all otherwise.
        num_keypoints: keypoints per instance (Keypoint R-CNN only; default: the weights' or 17).
        head_rows: ``head_rows[label]`` = COCO class whose pretrained rows start label ``label``
            (-1: keep the new row; ``segtune.models.transfer``); needs whole-model weights.
        mask_hidden: width of the new mask predictor (Mask R-CNN only).
        **detector_kwargs: passed to the torchvision detector class (``min_size``, ``rpn_*``, ...).

    Raises:
        WeightsError: weights cannot be found, fetched or loaded, or do not fit.
        ConfigError: ``norm`` or ``trainable_backbone_layers`` is invalid, or ``head_rows`` without
            whole-model weights.
    """
    whole = _whole_model_weights(recipe, weights, must_exist=load_weights)
    backbone_weights = None
    if whole is None:
        backbone_weights = resolve_backbone_weights(recipe.backbone_name, weights_backbone, must_exist=load_weights)
    pretrained = whole is not None or backbone_weights is not None
    if pretrained and norm == "gn":
        raise ConfigError("model.norm 'gn' cannot hold the batch-norm statistics of pretrained weights; use it "
                          "with model.weights none and model.weights_backbone none, or choose auto/frozen_bn/bn")
    try:
        norm_layer = norm_layer_for(norm, pretrained=pretrained)
    except ValueError as e:
        raise ConfigError(f"model.norm: {e}") from None
    layers = _trainable_layers(recipe, trainable_backbone_layers, pretrained)
    if head_rows is not None and whole is None and load_weights:
        raise ConfigError(f"model.init_head_from_coco needs whole-model COCO weights, but {recipe.name} is built "
                          f"with model.weights '{weights}'")

    body = get_model(recipe.backbone_name, weights=None, norm_layer=norm_layer)
    if load_weights and backbone_weights is not None:
        _load(body, load_weights_state(backbone_weights, progress=progress, option="--weights-backbone"),
              f"--weights-backbone {weights_backbone}", recipe.backbone_name)
    model = recipe.make(body, trainable_layers=layers, num_classes=num_classes,
                        num_keypoints=num_keypoints or 17, **{**recipe.defaults, **detector_kwargs})

    state = load_weights_state(whole, progress=progress) if load_weights and whole is not None else None
    if state is not None:
        # Size the output layers like the file's, load everything strictly, then replace below.
        classes, keypoints, hidden = sizes_in_state(model, state)
        if classes is not None and (classes != num_classes_of(model) or hidden != mask_hidden_of(model)):
            replace_heads(model, classes, mask_hidden=hidden)
        if keypoints is not None and keypoints != num_keypoints_of(model):
            replace_keypoint_head(model, keypoints)
        _load(model, state, f"--weights {weights}", recipe.name)
        logger.info("loaded %s weights %s", recipe.name, weights)
    entry = official_entry(recipe.weights_name, whole) if recipe.weights_name is not None else None
    if entry is not None and (recipe.weights_name, entry.name) in FROZEN_BN_EPS_ZERO:
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = 0.0

    if (state is None or head_rows is not None or num_classes_of(model) != num_classes
            or mask_hidden_of(model) not in (None, mask_hidden)):
        replace_heads(model, num_classes, mask_hidden=mask_hidden)
    if num_keypoints is not None and num_keypoints_of(model) not in (None, num_keypoints):
        replace_keypoint_head(model, num_keypoints)
    if head_rows is not None and state is not None:
        transfer_head_rows(state, model, head_rows)
    return model


def build_model(
    name: str, *, num_classes: int, weights: str | None, load_weights: bool = True, **kwargs: Any
) -> nn.Module:
    """Build registered model ``name``; ``kwargs`` are its builder's (see :func:`build_detector`)."""
    return _spec(name).build(num_classes=num_classes, weights=weights, load_weights=load_weights, **kwargs)


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"model.name '{name}' is not registered; choose one of: {', '.join(MODELS.names())}")
    return MODELS.get(name)


def default_weights(name: str) -> WeightsEnum | None:
    """The DEFAULT whole-model weights entry of registered model ``name``; None for a model without any."""
    spec = _spec(name)
    return None if spec.weights_name is None else get_model_weights(spec.weights_name).DEFAULT


def coco_categories(spec: ModelSpec, weights: str | None) -> list[str]:
    """The categories (index = COCO label) of the whole-model weights ``weights`` of ``spec``.

    Raises:
        ConfigError: ``weights`` are not whole-model weights with COCO categories.
    """
    whole = None if spec.weights_name is None else resolve_weights(spec.weights_name, weights)
    if whole is None:
        raise ConfigError(f"model.init_head_from_coco needs whole-model COCO weights (model.weights DEFAULT or a "
                          f"COCO entry or file), but {spec.name} is built with model.weights '{weights}'")
    # A local file that is not torchvision's own is taken to hold the DEFAULT entry's COCO layout.
    entry = official_entry(spec.weights_name, whole) or get_model_weights(spec.weights_name).DEFAULT
    return list(entry.meta["categories"])


def build_from_config(
    model_cfg: Any,
    num_classes: int,
    *,
    classes: list[str] | None = None,
    num_keypoints: int | None = None,
    load_weights: bool = True,
) -> nn.Module:
    """Build the model a ``ModelConfig`` section describes (the only place that reads one).

    Args:
        model_cfg: the ``model`` section.
        num_classes: classes including the background.
        classes: the data set's class names (background excluded); needed by ``init_head_from_coco``.
        num_keypoints: keypoints per instance, for keypoint models.
        load_weights: False: load nothing (a segtune checkpoint goes on top).
    """
    spec = _spec(model_cfg.name)
    head_rows = None
    if model_cfg.init_head_from_coco and load_weights:
        if not classes:
            raise ConfigError("model.init_head_from_coco needs the data set's class names")
        head_rows = parse_coco_mapping(model_cfg.init_head_from_coco, classes,
                                       coco_categories(spec, model_cfg.weights))
    return spec.build(
        num_classes=num_classes, weights=model_cfg.weights, load_weights=load_weights,
        weights_backbone=model_cfg.weights_backbone, norm=model_cfg.norm,
        trainable_backbone_layers=model_cfg.trainable_backbone_layers, num_keypoints=num_keypoints,
        head_rows=head_rows, **spec.from_config(model_cfg),
    )


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[nn.Module, Any]:
    """Rebuild the model a segtune checkpoint was trained as and load its weights.

    Returns ``(model, config)`` with the model in eval mode on the CPU. Nothing is downloaded.

    Raises:
        CheckpointError: the config or the weights in the checkpoint do not build a model.
    """
    path = ckpt.get("path", "checkpoint")
    cfg = checkpoint_config(ckpt)
    try:
        model = build_from_config(cfg.model, num_classes=len(ckpt["classes"]) + 1,
                                  num_keypoints=ckpt.get("num_keypoints"), load_weights=False)
    except ConfigError as e:
        raise CheckpointError(f"{path}: its config does not build a model ({e})") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {cfg.model.name} ({str(e).splitlines()[0]})") from None
    return model.eval(), cfg
