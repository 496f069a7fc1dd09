"""Owns the two-stage detectors composed on custom backbones: the generic families and Mask R-CNN MobileNetV3-FPN.

Registered models:

* ``fasterrcnn``, ``maskrcnn``, ``keypointrcnn``: torchvision's Faster / Mask / Keypoint R-CNN on any
  backbone of :data:`segtune.models.backbones.BACKBONES` (``--backbone NAME``, required), with or
  without FPN, with configurable anchors and RoIAlign. No whole-model weights are published for
  these: ``--weights`` takes only a local file (a segtune checkpoint or state dict of the same
  model), and ``DEFAULT`` means none; the backbone starts from ``--weights-backbone`` (ImageNet).
* ``maskrcnn_mobilenet_v3_large_fpn``: Mask R-CNN on the MobileNetV3-Large FPN backbone and anchors
  of torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` (torchvision has no such builder), so that
  ``--weights DEFAULT`` loads that detector's COCO weights for the backbone, RPN and box head; the
  mask head starts new.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from segtune.errors import ConfigError, WeightsError
from segtune.models.backbones import (
    BACKBONES, backbone_family, build_backbone, checked_norm_layer, feature_names, load_trunk_weights, trainable_stages,
)
from segtune.models.norms import group_norm
from segtune.models.spec import ModelSpec, register
from segtune.models.weights import NO_WEIGHTS, load_state_dict_file, resolve_backbone_weights, resolve_weights
from segtune.models.weights import load_weights as load_weights_state

logger = logging.getLogger(__name__)

#: Anchor sizes in pixels: one per FPN level, or all of them on a single feature map (the recipe).
DEFAULT_ANCHOR_SIZES = (32, 64, 128, 256, 512)
#: Anchor aspect ratios (height / width), the same on every level.
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)
#: RoIAlign output size of the mask and keypoint heads (torchvision's).
MASK_ROI_SIZE = KEYPOINT_ROI_SIZE = 14
#: Features of torchvision's two-layer box head (TwoMLPHead), the box predictor's input.
BOX_HEAD_CHANNELS = 1024
#: Channels the mask head feeds its predictor (torchvision's four 256-channel convs).
MASK_HEAD_CHANNELS = 256
#: Convolutions of the mask head (torchvision's).
MASK_HEAD_CONVS = 4
#: Normalisation of the box and mask heads: ``none`` (torchvision's v1 heads) or ``gn`` (its v2 heads' GroupNorm).
HEAD_NORMS = ("none", "gn")
#: COCO's person keypoint count, used when none is given (torchvision's default).
COCO_KEYPOINTS = 17

_FAMILIES = {"fasterrcnn": "detection", "maskrcnn": "instance-segmentation", "keypointrcnn": "keypoints"}
_TITLES = {"fasterrcnn": "Faster R-CNN", "maskrcnn": "Mask R-CNN", "keypointrcnn": "Keypoint R-CNN"}
# Parameters whose shape follows the class (or keypoint) count or the predictor width: a file made for
# other classes leaves them at their new initialisation.
_PREDICTORS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.", "roi_heads.keypoint_predictor.")
# Heads one two-stage detector has and another lacks: may be new (Faster R-CNN file -> Mask R-CNN)
# or unused (Mask R-CNN file -> Faster R-CNN).
_OPTIONAL_HEADS = ("roi_heads.mask_head.", "roi_heads.mask_predictor.",
                   "roi_heads.keypoint_head.", "roi_heads.keypoint_predictor.")
_COCO_SOURCE = "fasterrcnn_mobilenet_v3_large_fpn"


def anchor_generator(levels: list[str], sizes: list[int] | None, ratios: list[float] | None, *,
                     backbone: str) -> AnchorGenerator:
    """Anchors for a backbone returning maps ``levels``: one size per level with FPN, all sizes on one map without.

    Raises:
        ConfigError: an FPN gets a number of sizes other than its number of levels.
    """
    sizes = tuple(sizes or DEFAULT_ANCHOR_SIZES)
    ratios = tuple(float(r) for r in (ratios or DEFAULT_ASPECT_RATIOS))
    if len(levels) == 1:
        return AnchorGenerator((sizes,), (ratios,))
    if len(sizes) != len(levels):
        raise ConfigError(f"model.anchor_sizes has {len(sizes)} sizes, but the {backbone} FPN has {len(levels)} "
                          f"levels ({', '.join(levels)}); give one size per level")
    return AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * len(levels))


def _resolve_own_weights(model_name: str, spec: str | None, *, must_exist: bool) -> Path | None:
    """``--weights`` of a model without published weights: a local file, or None (``DEFAULT`` included)."""
    if spec == "DEFAULT":
        logger.info("%s has no whole-model pretrained weights (DEFAULT means none); backbone weights only", model_name)
        return None
    if spec is None or spec in NO_WEIGHTS:
        return None
    path = Path(spec).expanduser()
    if path.is_file() or not must_exist:
        return path
    raise WeightsError(
        f"--weights '{spec}': model '{model_name}' has no published whole-model weights; --weights takes a "
        f"path to a state dict or segtune checkpoint of this model, or DEFAULT / none (both: none; the "
        f"backbone starts from --weights-backbone)"
    )


def load_detector_state(model: nn.Module, state: dict[str, torch.Tensor], *, source: str, model_name: str) -> list[str]:
    """Load a detector state dict whose predictors may be sized for other classes; return the keys left new.

    Predictor tensors of another shape are skipped, and heads the file lacks (a Faster R-CNN file into
    a Mask R-CNN) stay new; both are logged. Everything else must fit.

    Raises:
        WeightsError: the file does not fit ``model``; the message names ``source`` and keys.
    """
    own = model.state_dict()
    usable = {k: v for k, v in state.items()
              if not (k.startswith(_PREDICTORS) and k in own and own[k].shape != v.shape)}
    try:
        missing, unexpected = model.load_state_dict(usable, strict=False)
    except RuntimeError as e:
        raise WeightsError(f"{source}: does not fit {model_name} ({str(e).splitlines()[-1].strip()})") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    bad_missing = [k for k in missing if not k.startswith(_PREDICTORS + _OPTIONAL_HEADS)]
    bad_unexpected = [k for k in unexpected if not k.startswith(_OPTIONAL_HEADS)]
    if bad_missing or bad_unexpected:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", bad_missing), ("unexpected", bad_unexpected)) if keys)
        raise WeightsError(f"{source}: does not fit {model_name} ({detail})")
    if missing:
        heads = sorted({".".join(k.split(".")[:2]) for k in missing})
        logger.info("%s: %d tensors not in %s start new: %s", model_name, len(missing), source, ", ".join(heads))
    if unexpected:
        logger.info("%s: %d tensors of %s unused (%s)", model_name, len(unexpected), source,
                    ", ".join(sorted({".".join(k.split(".")[:2]) for k in unexpected})))
    return missing


@dataclasses.dataclass(frozen=True)
class HeadShape:
    """The sizes of the RoI heads of a composed detector; the defaults are torchvision's Mask R-CNN (v1).

    Attributes:
        norm: ``none``, or ``gn``: GroupNorm after every head convolution (as torchvision's v2 models
            and Detectron2's from-scratch recipes; it trains without pretrained statistics).
        box_convs: 3x3 convolutions of the box head before its one fully connected layer (a
            ``FastRCNNConvFCHead``); 0 = torchvision's two fully connected layers (``TwoMLPHead``).
        box_dim: width of the box head's fully connected layer(s), the box predictor's input.
        mask_channels: width of the mask head's four convolutions.
    """

    norm: str = "none"
    box_convs: int = 0
    box_dim: int = BOX_HEAD_CHANNELS
    mask_channels: int = MASK_HEAD_CHANNELS

    def __post_init__(self) -> None:
        if self.norm not in HEAD_NORMS:
            raise ConfigError(f"model.head_norm must be one of {', '.join(HEAD_NORMS)}, got {self.norm!r}")
        if self.box_convs < 0 or self.box_dim < 1 or self.mask_channels < 1:
            raise ConfigError(f"model.box_head_convs must be >= 0 and model.box_head_dim, model.mask_head_channels "
                              f">= 1 (got {self.box_convs}, {self.box_dim}, {self.mask_channels})")


def _head_parts(family: str, roi_levels: list[str], channels: int, roi_size: int, num_classes: int,
                mask_hidden: int, heads: HeadShape) -> dict[str, Any]:
    """Detector arguments for box (and mask) heads of shape ``heads`` on ``channels``-wide features.

    MaskRCNN refuses ``num_classes`` next to its own ``mask_predictor``, so the predictors are given.
    """
    norm = group_norm if heads.norm == "gn" else None
    if heads.box_convs:
        box_head: nn.Module = FastRCNNConvFCHead((channels, roi_size, roi_size), [channels] * heads.box_convs,
                                                 [heads.box_dim], norm_layer=norm)
    else:
        box_head = TwoMLPHead(channels * roi_size**2, heads.box_dim)
    parts: dict[str, Any] = {"num_classes": None, "box_head": box_head,
                             "box_predictor": FastRCNNPredictor(heads.box_dim, num_classes)}
    if family == "maskrcnn":
        parts.update({
            "mask_roi_pool": MultiScaleRoIAlign(roi_levels, MASK_ROI_SIZE, 2),
            "mask_head": MaskRCNNHeads(channels, [heads.mask_channels] * MASK_HEAD_CONVS, 1, norm_layer=norm),
            "mask_predictor": MaskRCNNPredictor(heads.mask_channels, mask_hidden, num_classes),
        })
    return parts


def _apply_head_rows(source_state: dict[str, torch.Tensor] | None, model: nn.Module, head_rows: list[int] | None,
                     *, model_name: str) -> None:
    if head_rows is None:
        return
    if source_state is None:
        raise ConfigError(f"model.init_head_from_coco needs whole-model pretrained weights; {model_name} is built "
                          f"without any here (--weights)")
    from segtune.models.transfer import transfer_head_rows  # helper module of the head transfer

    transfer_head_rows(source_state, model, head_rows)


def _family_builder(family: str) -> Callable[..., nn.Module]:
    def build(
        *,
        num_classes: int,
        weights: str | None = None,
        load_weights: bool = True,
        weights_backbone: str | None = "DEFAULT",
        norm: str = "auto",
        trainable_backbone_layers: int | None = None,
        num_keypoints: int | None = None,
        head_rows: list[int] | None = None,
        backbone: str | None = None,
        fpn: bool = True,
        anchor_sizes: list[int] | None = None,
        aspect_ratios: list[float] | None = None,
        roi_output_size: int = 7,
        roi_sampling_ratio: int = 2,
        mask_hidden: int = 256,
        fpn_channels: int = 256,
        fpn_levels: int = 4,
        heads: HeadShape = HeadShape(),
        progress: bool = True,
        **detector_kwargs: Any,
    ) -> nn.Module:
        if backbone is None:
            raise ConfigError(f"model '{family}' needs --backbone NAME; choose one of: {', '.join(BACKBONES)}")
        backbone_family(backbone)  # an unknown name fails here, listing the supported ones
        whole = _resolve_own_weights(family, weights, must_exist=load_weights)
        # As torchvision's builders: whole-model weights make the backbone weights moot.
        spec = None if whole is not None else weights_backbone
        pretrained = whole is not None or resolve_backbone_weights(backbone, spec, must_exist=load_weights) is not None
        body = build_backbone(backbone, fpn=fpn, weights_backbone=spec, norm=norm,
                              trainable_layers=trainable_backbone_layers, load_weights=load_weights,
                              pretrained=pretrained, progress=progress, fpn_channels=fpn_channels,
                              fpn_levels=fpn_levels)
        levels = feature_names(body)
        roi_levels = [n for n in levels if n != "pool"]
        anchors = anchor_generator(levels, anchor_sizes, aspect_ratios, backbone=backbone)
        box_pool = MultiScaleRoIAlign(roi_levels, roi_output_size, roi_sampling_ratio)
        common = {"rpn_anchor_generator": anchors, "box_roi_pool": box_pool, **detector_kwargs}
        common.update(_head_parts(family, roi_levels, body.out_channels, roi_output_size, num_classes, mask_hidden,
                                  heads))
        if family == "fasterrcnn":
            model: nn.Module = FasterRCNN(body, **common)
        elif family == "maskrcnn":
            model = MaskRCNN(body, **common)
        else:
            model = KeypointRCNN(body, num_keypoints=num_keypoints or COCO_KEYPOINTS,
                                 keypoint_roi_pool=MultiScaleRoIAlign(roi_levels, KEYPOINT_ROI_SIZE, 2), **common)
        if load_weights:
            state = load_state_dict_file(whole) if whole is not None else None
            if state is not None:
                load_detector_state(model, state, source=str(whole), model_name=f"{family} ({backbone})")
            _apply_head_rows(state, model, head_rows, model_name=family)
        return model

    build.__name__ = build.__qualname__ = family
    build.__doc__ = f"""{family} on a custom backbone (``backbone`` required); task {_FAMILIES[family]}.

    Args:
        num_classes: classes including background.
        weights: a local state dict / segtune checkpoint of this model, or ``DEFAULT`` / ``none``
            (both mean none: no whole-model weights are published for a custom backbone).
        load_weights: build the architecture ``weights`` / ``weights_backbone`` imply but load nothing.
        weights_backbone: classification weights for the backbone (see
            :func:`segtune.models.backbones.build_backbone`); ignored when ``weights`` names a file.
        norm, trainable_backbone_layers: see :func:`segtune.models.backbones.build_backbone`.
        num_keypoints: keypoints per object (keypointrcnn; default 17, COCO's).
        head_rows: start the new predictors from these rows of the ``weights`` file's predictors.
        backbone: a key of :data:`segtune.models.backbones.BACKBONES`.
        fpn: feature pyramid (maps '0'..'3' + 'pool') or the trunk's last map alone ('0').
        anchor_sizes: anchor sizes in pixels: one per FPN level (5), or all on the single map;
            default 32, 64, 128, 256, 512.
        aspect_ratios: anchor aspect ratios on every level; default 0.5, 1, 2.
        roi_output_size, roi_sampling_ratio: RoIAlign of the box head (masks and keypoints use 14, 2).
        mask_hidden: hidden channels of the mask predictor (maskrcnn).
        fpn_channels, fpn_levels: width and depth of the feature pyramid (see
            :func:`segtune.models.backbones.build_backbone`).
        heads: norm and sizes of the box and mask heads (:class:`HeadShape`; default torchvision's).
        **detector_kwargs: passed to torchvision's detector (``min_size``, ``rpn_*``, ``box_*``).

    Raises:
        ConfigError: no or unknown backbone, anchors that do not fit, bad norm or trainable layers.
        WeightsError: weights that cannot be found, fetched or loaded.
    """
    return build


def _two_stage_kwargs(cfg: Any) -> dict[str, Any]:
    return {
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "rpn_pre_nms_top_n_train": cfg.rpn_pre_nms_top_n_train,
        "rpn_post_nms_top_n_train": cfg.rpn_post_nms_top_n_train,
        "rpn_pre_nms_top_n_test": cfg.rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_test": cfg.rpn_post_nms_top_n_test,
        "box_batch_size_per_image": cfg.box_batch_size_per_image,
        "box_detections_per_img": cfg.box_detections_per_img,
    }


def _family_from_config(family: str) -> Callable[[Any], dict[str, Any]]:
    def from_config(cfg: Any) -> dict[str, Any]:
        kwargs = {
            **_two_stage_kwargs(cfg),
            "backbone": cfg.backbone,
            "fpn": cfg.fpn,
            "anchor_sizes": cfg.anchor_sizes,
            "aspect_ratios": cfg.aspect_ratios,
            "roi_output_size": cfg.roi_output_size,
            "roi_sampling_ratio": cfg.roi_sampling_ratio,
            "fpn_channels": cfg.fpn_channels,
            "fpn_levels": cfg.fpn_levels,
            "heads": HeadShape(norm=cfg.head_norm, box_convs=cfg.box_head_convs, box_dim=cfg.box_head_dim,
                               mask_channels=cfg.mask_head_channels),
        }
        if family == "maskrcnn":
            kwargs["mask_hidden"] = cfg.mask_hidden
        return kwargs

    return from_config


for _name, _task in _FAMILIES.items():
    register(ModelSpec(
        name=_name, task=_task, build=_family_builder(_name), from_config=_family_from_config(_name),
        weights_name=None,
        description=f"{_TITLES[_name]} on --backbone NAME, with or without FPN (backbone weights only)",
    ))


# --- Mask R-CNN on torchvision's MobileNetV3-Large FPN ------------------------------------------------


#: Trainable stages of torchvision's MobileNet FPN extractor: 0-6, default 3 when pretrained.
_MOBILENET_STAGES = 6


def maskrcnn_mobilenet_v3_large_fpn(
    *,
    num_classes: int,
    weights: str | None = "DEFAULT",
    load_weights: bool = True,
    weights_backbone: str | None = "DEFAULT",
    norm: str = "auto",
    trainable_backbone_layers: int | None = None,
    num_keypoints: int | None = None,
    head_rows: list[int] | None = None,
    mask_hidden: int = 256,
    progress: bool = True,
    **detector_kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN on the backbone, anchors and box head of torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``.

    The backbone is MobileNetV3-Large with an FPN on its last two stages (maps '0', '1', 'pool', 15
    anchors of sizes 32-512 on each), built by torchvision's ``mobilenet_backbone`` so that the COCO
    weights of ``fasterrcnn_mobilenet_v3_large_fpn`` load key for key. ``trainable_backbone_layers``
    counts torchvision's six MobileNet stages (0-6; default 3 when pretrained, 6 otherwise).

    Args:
        num_classes: classes including background.
        weights: ``DEFAULT`` / ``COCO_V1``: the COCO weights of ``fasterrcnn_mobilenet_v3_large_fpn``
            (hub cache, file ``fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth``) for the backbone, RPN
            and box head, the mask head new; ``none``; or a path to that file or to a state dict /
            segtune checkpoint of this model.
        load_weights: build the architecture the weights imply but load nothing.
        weights_backbone: MobileNetV3-Large classification weights when ``weights`` is ``none``.
        norm: see :func:`segtune.models.norms.norm_layer_for` (BatchNorm eps 1e-5, as torchvision's detector).
        trainable_backbone_layers: see above; without pretrained weights all stages train.
        num_keypoints: unused (no keypoint head).
        head_rows: start the new box predictor rows from these COCO classes' rows.
        mask_hidden: hidden channels of the mask predictor.
        **detector_kwargs: passed to ``MaskRCNN``; ``rpn_score_thresh`` defaults to 0.05 as in
            torchvision's MobileNet detectors.

    Raises:
        ConfigError: bad norm or trainable layers.
        WeightsError: the weights cannot be found, fetched or loaded; offline, the message names the
            file to place in the hub cache.
    """
    name = "maskrcnn_mobilenet_v3_large_fpn"
    resolved = resolve_weights(_COCO_SOURCE, weights, must_exist=load_weights)
    spec = None if resolved is not None else weights_backbone
    backbone_weights = resolve_backbone_weights("mobilenet_v3_large", spec, must_exist=load_weights)
    pretrained = resolved is not None or backbone_weights is not None
    norm_layer = checked_norm_layer(norm, pretrained=pretrained, what=name)
    layers = trainable_stages(trainable_backbone_layers, _MOBILENET_STAGES, pretrained=pretrained, name=name)
    body = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True, norm_layer=norm_layer,
                              trainable_layers=layers)
    levels = feature_names(body)
    roi_levels = [n for n in levels if n != "pool"]
    anchors = AnchorGenerator((DEFAULT_ANCHOR_SIZES,) * len(levels), (DEFAULT_ASPECT_RATIOS,) * len(levels))
    detector_kwargs.setdefault("rpn_score_thresh", 0.05)
    model = MaskRCNN(body, rpn_anchor_generator=anchors, box_roi_pool=MultiScaleRoIAlign(roi_levels, 7, 2),
                     **_head_parts("maskrcnn", roi_levels, body.out_channels, 7, num_classes, mask_hidden, HeadShape()),
                     **detector_kwargs)
    if not load_weights:
        return model
    state = None
    if resolved is not None:
        state = load_weights_state(resolved, progress=progress)
        source = str(resolved) if isinstance(resolved, Path) else f"{_COCO_SOURCE} {resolved.name}"
        load_detector_state(model, state, source=source, model_name=name)
    elif backbone_weights is not None:
        source = str(backbone_weights) if isinstance(backbone_weights, Path) else \
            f"mobilenet_v3_large {backbone_weights.name}"
        load_trunk_weights(body.body, load_weights_state(backbone_weights, progress=progress,
                                                           option="--weights-backbone"),
                           name="mobilenet_v3_large", source=source)
    _apply_head_rows(state, model, head_rows, model_name=name)
    return model


def _mobilenet_from_config(cfg: Any) -> dict[str, Any]:
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    changed = [key for key in ("backbone", "fpn", "anchor_sizes", "aspect_ratios", "roi_output_size",
                               "roi_sampling_ratio") if getattr(cfg, key) != defaults[key]]
    if changed:
        keys = ", ".join(f"model.{k}" for k in changed)
        raise ConfigError(f"{keys}: maskrcnn_mobilenet_v3_large_fpn has the fixed backbone, anchors and RoIAlign of "
                          f"torchvision's fasterrcnn_mobilenet_v3_large_fpn (so its COCO weights fit); use "
                          f"--model maskrcnn --backbone mobilenet_v3_large to choose them")
    return {**_two_stage_kwargs(cfg), "mask_hidden": cfg.mask_hidden}


register(ModelSpec(
    name="maskrcnn_mobilenet_v3_large_fpn", task="instance-segmentation", build=maskrcnn_mobilenet_v3_large_fpn,
    from_config=_mobilenet_from_config, weights_name=_COCO_SOURCE,
    description="Mask R-CNN on MobileNetV3-Large FPN; COCO weights of fasterrcnn_mobilenet_v3_large_fpn for "
                "backbone, RPN and box head, mask head new",
))
