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
from functools import partial
from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from segtune.errors import ConfigError
from segtune.models.backbones import (
    BACKBONES, backbone_family, feature_names, freeze_stages, on_trunk, trunk_of, trunk_stages,
)
from segtune.models.builders import Recipe, build_detector
from segtune.models.norms import group_norm
from segtune.models.spec import ModelSpec, register

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

_FAMILIES = {"fasterrcnn": "detection", "maskrcnn": "instance-segmentation", "keypointrcnn": "keypoints"}
_TITLES = {"fasterrcnn": "Faster R-CNN", "maskrcnn": "Mask R-CNN", "keypointrcnn": "Keypoint R-CNN"}
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


def _make_family(body: nn.Module, *, family: str, backbone: str, fpn: bool, fpn_channels: int, fpn_levels: int,
                 anchor_sizes: list[int] | None, aspect_ratios: list[float] | None, roi_output_size: int,
                 roi_sampling_ratio: int, mask_hidden: int, heads: HeadShape, trainable_layers: int,
                 num_classes: int, num_keypoints: int, **detector_kwargs: Any) -> nn.Module:
    """``family``'s detector around classification model ``body``: its trunk (stages past
    ``trainable_layers`` frozen), an FPN or the last map, anchors, RoIAlign and heads."""
    trunk = trunk_of(body, backbone)
    stages = trunk_stages(trunk)
    freeze_stages(trunk, stages, trainable_layers, name=backbone)
    features = on_trunk(trunk, stages, name=backbone, fpn=fpn, fpn_channels=fpn_channels, fpn_levels=fpn_levels)
    levels = feature_names(features)
    roi_levels = [n for n in levels if n != "pool"]
    common = {"rpn_anchor_generator": anchor_generator(levels, anchor_sizes, aspect_ratios, backbone=backbone),
              "box_roi_pool": MultiScaleRoIAlign(roi_levels, roi_output_size, roi_sampling_ratio), **detector_kwargs}
    common.update(_head_parts(family, roi_levels, features.out_channels, roi_output_size, num_classes, mask_hidden,
                              heads))
    if family == "fasterrcnn":
        return FasterRCNN(features, **common)
    if family == "maskrcnn":
        return MaskRCNN(features, **common)
    return KeypointRCNN(features, num_keypoints=num_keypoints,
                        keypoint_roi_pool=MultiScaleRoIAlign(roi_levels, KEYPOINT_ROI_SIZE, 2), **common)


def _family_builder(family: str) -> Callable[..., nn.Module]:
    def build(
        *,
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
        weights: Any = None,
        weights_backbone: Any = "DEFAULT",
        **common: Any,
    ) -> nn.Module:
        if backbone is None:
            raise ConfigError(f"model '{family}' needs --backbone NAME; choose one of: {', '.join(BACKBONES)}")
        backbone_family(backbone)  # an unknown name fails here, listing the supported ones
        make = partial(_make_family, family=family, backbone=backbone, fpn=fpn, fpn_channels=fpn_channels,
                       fpn_levels=fpn_levels, anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios,
                       roi_output_size=roi_output_size, roi_sampling_ratio=roi_sampling_ratio,
                       mask_hidden=mask_hidden, heads=heads)
        recipe = Recipe(f"{family} ({backbone})", None, backbone, make=make, backbone_eps=True)
        return build_detector(recipe, weights=weights, weights_backbone=weights_backbone, mask_hidden=mask_hidden,
                              **common)

    build.__name__ = build.__qualname__ = family
    build.__doc__ = f"""{family} on a custom backbone (``backbone`` required); task {_FAMILIES[family]}.

    Built by :func:`segtune.models.builders.build_detector`; the arguments not listed here are its own
    (``num_classes``, ``load_weights``, ``norm``, ``trainable_backbone_layers``, ``head_rows``, ...).

    Args:
        weights: a local state dict / segtune checkpoint of this model, or ``DEFAULT`` / ``none``
            (both mean none: no whole-model weights are published for a custom backbone).
        weights_backbone: classification weights for the backbone; ignored when ``weights`` names a file.
        backbone: a key of :data:`segtune.models.backbones.BACKBONES`.
        fpn: feature pyramid (maps '0'..'3' + 'pool') or the trunk's last map alone ('0').
        anchor_sizes: anchor sizes in pixels: one per FPN level, or all on the single map;
            default 32, 64, 128, 256, 512.
        aspect_ratios: anchor aspect ratios on every level; default 0.5, 1, 2.
        roi_output_size, roi_sampling_ratio: RoIAlign of the box head (masks and keypoints use 14, 2).
        mask_hidden: hidden channels of the mask predictor (maskrcnn).
        fpn_channels, fpn_levels: width and depth of the feature pyramid (see
            :func:`segtune.models.backbones.build_backbone`).
        heads: norm and sizes of the box and mask heads (:class:`HeadShape`; default torchvision's).

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
        weights_name=None, fits_anchors=True,
        description=f"{_TITLES[_name]} on --backbone NAME, with or without FPN (backbone weights only)",
    ))


# --- Mask R-CNN on torchvision's MobileNetV3-Large FPN ------------------------------------------------


#: Trainable stages of torchvision's MobileNet FPN extractor: 0-6, default 3 when pretrained.
_MOBILENET_STAGES = 6


def _maskrcnn_mobilenet(body: nn.Module, *, trainable_layers: int, num_classes: int, num_keypoints: int,
                        mask_hidden: int = 256, **detector_kwargs: Any) -> MaskRCNN:
    """Mask R-CNN on the backbone, anchors and box head of torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``.

    The backbone is MobileNetV3-Large with an FPN on its last two stages (maps '0', '1', 'pool', 15
    anchors of sizes 32-512 on each), cut by torchvision's own extractor so that the COCO weights of
    ``fasterrcnn_mobilenet_v3_large_fpn`` (``--weights DEFAULT``, file
    ``fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth``) load key for key into the backbone, RPN and
    box head; the mask head starts new. ``trainable_backbone_layers`` counts torchvision's six
    MobileNet stages (0-6; default 3 when pretrained, 6 otherwise); ``rpn_score_thresh`` defaults to
    0.05 as in torchvision's MobileNet detectors.
    """
    backbone = _mobilenet_extractor(body, True, trainable_layers)
    levels = feature_names(backbone)
    roi_levels = [n for n in levels if n != "pool"]
    anchors = AnchorGenerator((DEFAULT_ANCHOR_SIZES,) * len(levels), (DEFAULT_ASPECT_RATIOS,) * len(levels))
    return MaskRCNN(backbone, rpn_anchor_generator=anchors, box_roi_pool=MultiScaleRoIAlign(roi_levels, 7, 2),
                    **_head_parts("maskrcnn", roi_levels, backbone.out_channels, 7, num_classes, mask_hidden,
                                  HeadShape()),
                    **detector_kwargs)


MASKRCNN_MOBILENET = Recipe("maskrcnn_mobilenet_v3_large_fpn", _COCO_SOURCE, "mobilenet_v3_large",
                            make=_maskrcnn_mobilenet, max_trainable_layers=_MOBILENET_STAGES,
                            defaults={"rpn_score_thresh": 0.05})


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
    name="maskrcnn_mobilenet_v3_large_fpn", task="instance-segmentation", build=partial(build_detector, MASKRCNN_MOBILENET),
    from_config=_mobilenet_from_config, weights_name=_COCO_SOURCE,
    description="Mask R-CNN on MobileNetV3-Large FPN; COCO weights of fasterrcnn_mobilenet_v3_large_fpn for "
                "backbone, RPN and box head, mask head new",
))
