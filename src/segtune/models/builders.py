"""Owns building registered models: the one build path every registered model goes through.

:func:`build_detector` takes a :class:`Recipe` (declarative: which torchvision weights enum and
classification backbone, how the detector is made around it, its head keys) and does, for every
model alike: parse and resolve the whole-model or backbone-only weights (``segtune.models.weights``),
pick the backbone's normalisation and trainable stages, build the classification body and load its
weights, make the detector for the user's classes, load whole-model weights by the one rule of
``segtune.models.loading``, and start new rows from COCO classes if asked. The recipes are declared in
``segtune.models.zoo`` (torchvision's detectors) and ``segtune.models.composed`` (custom backbones).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torchvision.models import WeightsEnum, get_model_weights
from torchvision.ops import FrozenBatchNorm2d

from segtune.checkpoint import checkpoint_config
from segtune.errors import CheckpointError, ConfigError
from segtune.models.backbones import (
    backbone_norm_layer, classification_body, load_backbone_weights, trainable_stages, trunk_of, trunk_stages,
    weights_source,
)
from segtune.models.family import family_of
from segtune.models.heads import mask_hidden_of, replace_heads
from segtune.models.loading import RCNN_HEADS, HeadKeys, load_detector_state
from segtune.models.spec import MODELS, ModelSpec
from segtune.models.transfer import parse_coco_mapping, transfer_head_rows
from segtune.models.weights import Weights, official_entry, resolve_detector_weights
from segtune.models.weights import load_weights as load_weights_state

logger = logging.getLogger(__name__)

#: torchvision weights trained with FrozenBatchNorm2d eps = 0 (torchvision calls ``overwrite_eps(model,
#: 0.0)`` after loading them). A model built on them -- now, or rebuilt from a checkpoint of a
#: fine-tune that started from them -- must use the same eps or its outputs drift.
FROZEN_BN_EPS_ZERO = {
    ("fasterrcnn_resnet50_fpn", "COCO_V1"), ("maskrcnn_resnet50_fpn", "COCO_V1"),
    ("keypointrcnn_resnet50_fpn", "COCO_V1"), ("retinanet_resnet50_fpn", "COCO_V1"),
}
#: COCO's person keypoint count, used when none is given (torchvision's default).
COCO_KEYPOINTS = 17


@dataclass(frozen=True)
class Recipe:
    """How one detector is put together around a torchvision classification backbone.

    Attributes:
        name: the registered model name (for messages).
        weights_name: torchvision model name whose weights enum holds the whole-model weights, or
            None for a model without any published (``--weights DEFAULT`` then means none).
        backbone_name: torchvision classification model the backbone is cut from; its weights enum
            gives ``--weights-backbone``.
        make: ``make(body, *, trainable_layers, num_classes, num_keypoints, **detector_kwargs)``
            builds the detector around ``body``, the classification model (its weights loaded).
        max_trainable_layers: backbone stages there are to train (ResNet 5, MobileNetV3 6 in
            torchvision's count); None: the trunk's stride stages, counted on the body.
        heads: the state-dict keys of the class-specific layers and optional heads (the loading rule's data).
        defaults: detector keyword arguments this model was trained with where they differ from
            torchvision's class defaults (e.g. the 320 px MobileNet's ``min_size``).
        backbone_eps: BatchNorm with the classification weights' own eps (custom backbones); False:
            torch's default, as torchvision's detector builders.
    """

    name: str
    weights_name: str | None
    backbone_name: str
    make: Callable[..., nn.Module]
    max_trainable_layers: int | None = None
    heads: HeadKeys = RCNN_HEADS
    defaults: dict[str, Any] = field(default_factory=dict)
    backbone_eps: bool = False


def build_detector(
    recipe: Recipe,
    *,
    num_classes: int,
    weights: Weights | str | None,
    load_weights: bool = True,
    weights_backbone: Weights | str | None = None,
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
        weights: whole-model weights (:class:`~segtune.models.weights.Weights`, or its text):
            ``DEFAULT``, an entry name (``COCO_V1``), ``none``, or a file (torchvision's, or a segtune
            checkpoint / state dict), loaded by the rule of :mod:`segtune.models.loading`: output
            layers sized for other classes, and heads the file lacks, start new.
        load_weights: False builds the architecture the weights imply (normalisation, frozen stages,
            eps) and loads nothing: a segtune checkpoint goes on top; nothing is read or downloaded.
        weights_backbone: backbone-only weights when ``weights`` is none: ``DEFAULT``
            (IMAGENET1K_V1), an entry name of the classification model, ``none``, or a file.
        norm: backbone normalisation (``segtune.models.norms``): ``auto`` is frozen BatchNorm under
            pretrained weights (whole-model or backbone), BatchNorm without.
        trainable_backbone_layers: backbone stages that train; default 3 when pretrained, all otherwise.
        num_keypoints: keypoints per instance (Keypoint R-CNN only; default 17, COCO's).
        head_rows: ``head_rows[label]`` = COCO class whose pretrained rows start label ``label``
            (-1: keep the new row; ``segtune.models.transfer``); needs whole-model weights.
        mask_hidden: width of the new mask predictor (Mask R-CNN only).
        **detector_kwargs: passed to the detector's ``make`` (``min_size``, ``rpn_*``, ...).

    Raises:
        WeightsError: weights cannot be found, fetched or loaded, or do not fit.
        ConfigError: ``norm`` or ``trainable_backbone_layers`` is invalid, or ``head_rows`` without
            whole-model weights.
    """
    resolved = resolve_detector_weights(
        Weights.parse(weights), Weights.parse(weights_backbone, "--weights-backbone"), model=recipe.name,
        whole_from=recipe.weights_name, backbone_from=recipe.backbone_name, must_exist=load_weights)
    if head_rows is not None and resolved.whole is None and load_weights:
        raise ConfigError(f"model.init_head_from_coco needs whole-model COCO weights, but {recipe.name} is built "
                          f"with model.weights '{weights}'")
    norm_layer = backbone_norm_layer(recipe.backbone_name, norm, pretrained=resolved.pretrained,
                                     own_eps=recipe.backbone_eps)
    body = classification_body(recipe.backbone_name, norm_layer)
    if load_weights and resolved.backbone is not None:
        load_backbone_weights(body, load_weights_state(resolved.backbone, progress=progress, option="--weights-backbone"),
                              name=recipe.backbone_name, source=weights_source(resolved.backbone, recipe.backbone_name))
    stages = recipe.max_trainable_layers or len(trunk_stages(trunk_of(body, recipe.backbone_name)))
    layers = trainable_stages(trainable_backbone_layers, stages, pretrained=resolved.pretrained,
                              name=recipe.backbone_name)
    model = recipe.make(body, trainable_layers=layers, num_classes=num_classes,
                        num_keypoints=num_keypoints or COCO_KEYPOINTS, **{**recipe.defaults, **detector_kwargs})
    if mask_hidden_of(model) not in (None, mask_hidden):
        replace_heads(model, num_classes, mask_hidden=mask_hidden)

    state = None
    if load_weights and resolved.whole is not None:
        state = load_weights_state(resolved.whole, progress=progress)
        source = weights_source(resolved.whole, recipe.weights_name or recipe.name)
        load_detector_state(model, state, recipe.heads, source=source, model_name=recipe.name)
        logger.info("loaded %s weights %s", recipe.name, source)
    entry = official_entry(recipe.weights_name, resolved.whole) if recipe.weights_name is not None else None
    if entry is not None and (recipe.weights_name, entry.name) in FROZEN_BN_EPS_ZERO:
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = 0.0
    if head_rows is not None and state is not None:
        transfer_head_rows(state, model, head_rows)
    return model


def build_model(
    name: str, *, num_classes: int, weights: str | None, load_weights: bool = True, **kwargs: Any
) -> nn.Module:
    """Build registered model ``name``; ``kwargs`` are its builder's (see :func:`build_detector`)."""
    return _ready(_spec(name).build(num_classes=num_classes, weights=weights, load_weights=load_weights, **kwargs))


def _ready(model: nn.Module) -> nn.Module:
    family_of(model).ready_for_any_input(model)
    return model


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"model.name '{name}' is not registered; choose one of: {', '.join(MODELS.names())}")
    return MODELS.get(name)


def default_weights(name: str) -> WeightsEnum | None:
    """The DEFAULT whole-model weights entry of registered model ``name``; None for a model without any."""
    spec = _spec(name)
    return None if spec.weights_name is None else get_model_weights(spec.weights_name).DEFAULT


def coco_categories(spec: ModelSpec, weights: Weights | str | None) -> list[str]:
    """The categories (index = COCO label) of the whole-model weights ``weights`` of ``spec``.

    Raises:
        ConfigError: ``weights`` are not whole-model weights with COCO categories.
    """
    whole = None if spec.weights_name is None else Weights.parse(weights).resolve(spec.weights_name)
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
    # --weights and --weights-backbone are parsed here, once; everything below gets typed values (the
    # Weights.parse calls in build_detector and coco_categories pass a Weights through as it is, and parse
    # text only for Python callers that give build_detector a string).
    weights = Weights.parse(model_cfg.weights)
    weights_backbone = Weights.parse(model_cfg.weights_backbone, "--weights-backbone")
    head_rows = None
    if model_cfg.init_head_from_coco and load_weights:
        if not classes:
            raise ConfigError("model.init_head_from_coco needs the data set's class names")
        head_rows = parse_coco_mapping(model_cfg.init_head_from_coco, classes,
                                       coco_categories(spec, weights))
    return _ready(spec.build(
        num_classes=num_classes, weights=weights, load_weights=load_weights,
        weights_backbone=weights_backbone, norm=model_cfg.norm,
        trainable_backbone_layers=model_cfg.trainable_backbone_layers, num_keypoints=num_keypoints,
        head_rows=head_rows, **spec.from_config(model_cfg),
    ))


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
