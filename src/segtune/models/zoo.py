"""Owns the registry entries of torchvision's detectors: how each is composed and which config keys it reads.

Each architecture is put together from torchvision's public pieces (classification backbone, FPN
extractor, detector class, heads) the way torchvision's own builder does, so torchvision's weights
files load into it unchanged; composing it here rather than calling the builder lets segtune choose
the backbone's normalisation and frozen stages, and load (or refuse to download) weights itself.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, KeypointRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from segtune.errors import ConfigError
from segtune.models.builders import Recipe, build_detector
from segtune.models.loading import DENSE_HEADS
from segtune.models.spec import ModelSpec, register

#: ModelConfig keys every torchvision detector reads.
COMMON_KEYS = ("min_size", "max_size")
#: ... and those only two-stage (R-CNN) detectors read.
TWO_STAGE_KEYS = (
    "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",
    "box_batch_size_per_image", "box_detections_per_img",
)

#: ModelConfig keys of the custom-backbone families only (``segtune.models.backbones``).
CUSTOM_BACKBONE_KEYS = ("backbone", "fpn", "anchor_sizes", "aspect_ratios", "roi_output_size", "roi_sampling_ratio")


def config_kwargs(model_cfg: Any, keys: tuple[str, ...], own_defaults: dict[str, Any] | None = None,
                  rename: dict[str, str] | None = None) -> dict[str, Any]:
    """Builder keyword arguments from ``model_cfg``'s ``keys``.

    A key the model has its own default for (``own_defaults``, e.g. the 320 px MobileNet's
    ``min_size=320``) is left out while the config holds ModelConfig's default for it, so the model's
    own value applies unless the user set one. ``rename`` maps config keys to the detector's names.
    """
    config_defaults = {f.name: f.default for f in dataclasses.fields(model_cfg)}
    rename = rename or {}
    out = {}
    for key in keys:
        value = getattr(model_cfg, key)
        if key in (own_defaults or {}) and value == config_defaults.get(key):
            continue
        out[rename.get(key, key)] = value
    return out


def _refuse_custom_backbone_keys(model_cfg: Any, name: str) -> None:
    """A torchvision detector has its own backbone and anchors: say so rather than ignore the keys silently."""
    config_defaults = {f.name: f.default for f in dataclasses.fields(model_cfg)}
    for key in CUSTOM_BACKBONE_KEYS:
        if getattr(model_cfg, key) != config_defaults[key]:
            raise ConfigError(f"model.{key} is for the custom-backbone models (fasterrcnn, maskrcnn, keypointrcnn); "
                              f"{name} has a fixed backbone and anchors")


def _two_stage_config(recipe: Recipe, masks: bool) -> Any:
    def from_config(model_cfg: Any) -> dict[str, Any]:
        _refuse_custom_backbone_keys(model_cfg, recipe.name)
        kwargs = config_kwargs(model_cfg, COMMON_KEYS + TWO_STAGE_KEYS, recipe.defaults)
        if masks:
            kwargs["mask_hidden"] = model_cfg.mask_hidden
        return kwargs

    return from_config


def _one_stage_config(recipe: Recipe) -> Any:
    def from_config(model_cfg: Any) -> dict[str, Any]:
        _refuse_custom_backbone_keys(model_cfg, recipe.name)
        return config_kwargs(model_cfg, COMMON_KEYS + ("box_detections_per_img",), recipe.defaults,
                             rename={"box_detections_per_img": "detections_per_img"})

    return from_config


def _add(recipe: Recipe, task: str, description: str, *, one_stage: bool = False) -> None:
    from_config = _one_stage_config(recipe) if one_stage else _two_stage_config(recipe, task == "instance-segmentation")
    register(ModelSpec(name=recipe.name, task=task, build=partial(build_detector, recipe), from_config=from_config,
                       weights_name=recipe.weights_name, description=description))


# --- architectures: make(body, *, trainable_layers, num_classes, num_keypoints, **detector_kwargs) ---------


def _rcnn_anchors() -> AnchorGenerator:
    # One size per FPN level, three aspect ratios: torchvision's R-CNN default, spelled out because
    # the v2 RPN head needs the anchor count.
    return AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)


def _v2_parts(body: nn.Module, trainable_layers: int) -> dict[str, Any]:
    """Backbone, RPN and box head of the "v2" R-CNNs (Li et al. 2021): BatchNorm in FPN and heads.

    The ResNet itself takes ``model.norm`` like every other backbone, so under pretrained weights it
    has frozen BatchNorm (torchvision's v2 builder trains its BatchNorm, which suits the large
    synchronised batches the COCO weights were trained with, not batches of two). Evaluation is
    the same either way; ``model.norm bn`` trains them as torchvision does.
    """
    backbone = _resnet_fpn_extractor(body, trainable_layers, norm_layer=nn.BatchNorm2d)
    anchors = _rcnn_anchors()
    channels = backbone.out_channels
    return {
        "backbone": backbone,
        "rpn_anchor_generator": anchors,
        "rpn_head": RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=2),
        "box_head": FastRCNNConvFCHead((channels, 7, 7), [256, 256, 256, 256], [1024], norm_layer=nn.BatchNorm2d),
    }


def _maskrcnn(body, *, trainable_layers, num_classes, num_keypoints, **kw) -> MaskRCNN:
    return MaskRCNN(_resnet_fpn_extractor(body, trainable_layers), num_classes=num_classes, **kw)


def _maskrcnn_v2(body, *, trainable_layers, num_classes, num_keypoints, **kw) -> MaskRCNN:
    parts = _v2_parts(body, trainable_layers)
    mask_head = MaskRCNNHeads(parts["backbone"].out_channels, [256, 256, 256, 256], 1, norm_layer=nn.BatchNorm2d)
    return MaskRCNN(num_classes=num_classes, mask_head=mask_head, **parts, **kw)


def _fasterrcnn(body, *, trainable_layers, num_classes, num_keypoints, **kw) -> FasterRCNN:
    return FasterRCNN(_resnet_fpn_extractor(body, trainable_layers), num_classes=num_classes, **kw)


def _fasterrcnn_v2(body, *, trainable_layers, num_classes, num_keypoints, **kw) -> FasterRCNN:
    return FasterRCNN(num_classes=num_classes, **_v2_parts(body, trainable_layers), **kw)


def _fasterrcnn_mobilenet(body, *, trainable_layers, num_classes, num_keypoints, **kw) -> FasterRCNN:
    # The last two MobileNetV3 stages into a 3-level FPN (with the max-pool level); five sizes per level.
    backbone = _mobilenet_extractor(body, True, trainable_layers)
    anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
    return FasterRCNN(backbone, num_classes=num_classes, rpn_anchor_generator=anchors, **kw)


def _keypointrcnn(body, *, trainable_layers, num_classes, num_keypoints, **kw) -> KeypointRCNN:
    return KeypointRCNN(_resnet_fpn_extractor(body, trainable_layers), num_classes=num_classes,
                        num_keypoints=num_keypoints, **kw)


def _retinanet_v2(body, *, trainable_layers, num_classes, num_keypoints, **kw) -> RetinaNet:
    # P3-P5 from the FPN plus P6/P7 computed from C5 (no P2: too many anchors, as in the paper).
    backbone = _resnet_fpn_extractor(body, trainable_layers, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(2048, 256))
    # Three scales an octave apart in thirds, times three aspect ratios, per level.
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes,
                         norm_layer=partial(nn.GroupNorm, 32))
    head.regression_head._loss_type = "giou"  # what the v2 weights were trained with
    return RetinaNet(backbone, num_classes, anchor_generator=anchors, head=head, **kw)


def _fcos(body, *, trainable_layers, num_classes, num_keypoints, **kw) -> FCOS:
    backbone = _resnet_fpn_extractor(body, trainable_layers, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    return FCOS(backbone, num_classes, **kw)


_R50 = {"backbone_name": "resnet50", "max_trainable_layers": 5}
_MNV3 = {"backbone_name": "mobilenet_v3_large", "max_trainable_layers": 6}

_add(Recipe("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", make=_maskrcnn, **_R50), "instance-segmentation",
     "Mask R-CNN, ResNet-50 FPN (the torchvision fine-tuning tutorial's model)")
_add(Recipe("maskrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn_v2", make=_maskrcnn_v2, **_R50),
     "instance-segmentation", "Mask R-CNN v2, ResNet-50 FPN with normalised FPN and heads (more accurate, slower)")
_add(Recipe("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn", make=_fasterrcnn, **_R50), "detection",
     "Faster R-CNN, ResNet-50 FPN")
_add(Recipe("fasterrcnn_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn_v2", make=_fasterrcnn_v2, **_R50), "detection",
     "Faster R-CNN v2, ResNet-50 FPN with normalised FPN and heads")
_add(Recipe("fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_fpn", make=_fasterrcnn_mobilenet,
            **_MNV3), "detection", "Faster R-CNN, MobileNetV3-Large FPN (fast)")
_add(Recipe("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn",
            make=_fasterrcnn_mobilenet, **_MNV3,
            defaults={"min_size": 320, "max_size": 640, "rpn_pre_nms_top_n_test": 150,
                      "rpn_post_nms_top_n_test": 150, "rpn_score_thresh": 0.05}),
     "detection", "Faster R-CNN, MobileNetV3-Large FPN on 320 px images (fastest, for mobile)")
_add(Recipe("keypointrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn", make=_keypointrcnn, **_R50), "keypoints",
     "Keypoint R-CNN, ResNet-50 FPN (boxes and keypoints)")
_add(Recipe("retinanet_resnet50_fpn_v2", "retinanet_resnet50_fpn_v2", make=_retinanet_v2, heads=DENSE_HEADS, **_R50),
     "detection",
     "RetinaNet v2, ResNet-50 FPN (one-stage)", one_stage=True)
_add(Recipe("fcos_resnet50_fpn", "fcos_resnet50_fpn", make=_fcos, heads=DENSE_HEADS, **_R50), "detection",
     "FCOS, ResNet-50 FPN (one-stage, anchor-free)", one_stage=True)
