"""Custom backbones: every supported backbone with and without FPN, anchors and RoIAlign, the tutorial's
MobileNetV2 named config, and training with it from the command line (backbone weights and Mask R-CNN
on MobileNetV3-Large FPN: test_backbone_weights.py).

Models are built from random initialisation at 64-96 px with few proposals so a training step runs
in about a second on a CPU.
"""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from segtune.checkpoint import load_checkpoint
from segtune.cli.main import main
from segtune.config import build_config, load_yaml
from segtune.configs import named_config, named_configs
from segtune.errors import ConfigError, WeightsError
from segtune.models import MODELS, build_from_config, build_model, model_from_checkpoint
from segtune.models.backbones import BACKBONES, build_backbone
from tests.conftest import TINY_MODEL, make_mask_folder
from tests.models.helpers import SCRATCH, SMALL, train_step, tutorial_config

# Channels of each trunk's last feature map: the no-FPN backbone's out_channels.
LAST_CHANNELS = {
    "mobilenet_v2": 1280, "mobilenet_v3_large": 960, "mobilenet_v3_small": 576, "resnet18": 512, "resnet34": 512,
    "resnet50": 2048, "resnet101": 2048, "resnext50_32x4d": 2048, "efficientnet_b0": 1280, "convnext_tiny": 768,
}
FPN_LEVELS = ["0", "1", "2", "3", "pool"]


# --- every backbone, with and without FPN ------------------------------------------------------------


@pytest.mark.parametrize("fpn", [True, False], ids=["fpn", "single"])
@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_builds_and_trains_fasterrcnn(name, fpn):
    torch.manual_seed(0)
    # A 3x3 RoIAlign keeps the box head of the 2048-channel single maps small; 7 is tested below.
    model = build_model("fasterrcnn", num_classes=2, backbone=name, fpn=fpn, roi_output_size=3, **SCRATCH, **SMALL)
    backbone = model.backbone
    with torch.no_grad():
        features = backbone.eval()(torch.zeros(1, 3, 64, 64))
    if fpn:
        assert backbone.out_channels == 256
        assert list(features) == FPN_LEVELS
        # Strides 4, 8, 16, 32 and the pooled 64.
        assert [f.shape[-1] for f in features.values()] == [16, 8, 4, 2, 1]
        assert all(f.shape[1] == 256 for f in features.values())
        assert model.rpn.anchor_generator.num_anchors_per_location() == [3] * 5
        assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    else:
        assert backbone.out_channels == LAST_CHANNELS[name]
        assert isinstance(features, torch.Tensor) and features.shape[1:] == (LAST_CHANNELS[name], 2, 2)
        assert model.rpn.anchor_generator.num_anchors_per_location() == [15]
        assert model.roi_heads.box_roi_pool.featmap_names == ["0"]
    # Random initialisation: trainable normalisation (ConvNeXt keeps its LayerNorm), every stage trains.
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    losses = train_step(model, ["roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight",
                                "rpn.head.cls_logits.weight", "roi_heads.box_head.fc6.weight"])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    # The gradient reaches the first layer of the backbone too.
    first = next(p for p in backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_maskrcnn_family_trains_masks():
    torch.manual_seed(0)
    # Few RoIs: the mask head's four 256-channel convolutions run on every positive one.
    model = build_model("maskrcnn", num_classes=3, backbone="mobilenet_v3_small", mask_hidden=64, **SCRATCH,
                        **{**SMALL, "box_batch_size_per_image": 8})
    assert model.roi_heads.mask_predictor.conv5_mask.out_channels == 64
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    assert model.roi_heads.mask_roi_pool.featmap_names == ["0", "1", "2", "3"]
    assert model.roi_heads.mask_roi_pool.output_size == (14, 14)
    losses = train_step(model, ["roi_heads.mask_predictor.mask_fcn_logits.weight",
                                "roi_heads.box_predictor.cls_score.weight"], masks=True)
    assert "loss_mask" in losses
    model.eval()
    with torch.inference_mode():
        (out,) = model([torch.rand(3, 64, 80)])
    assert set(out) == {"boxes", "labels", "scores", "masks"}


def test_keypointrcnn_family_trains_keypoints():
    torch.manual_seed(0)
    model = build_model("keypointrcnn", num_classes=2, backbone="mobilenet_v3_small", fpn=False, num_keypoints=4,
                        **SCRATCH, **{**SMALL, "box_batch_size_per_image": 8})
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 4
    assert model.roi_heads.keypoint_roi_pool.featmap_names == ["0"]
    losses = train_step(model, ["roi_heads.keypoint_predictor.kps_score_lowres.weight"], keypoints=4)
    assert "loss_keypoint" in losses
    assert MODELS.get("keypointrcnn").task == "keypoints"


# --- the tutorial's MobileNetV2 named config ---------------------------------------------------------


def test_named_config_is_packaged():
    assert "tutorial_mobilenet_v2" in named_configs()
    assert named_config("tutorial_mobilenet_v2.yaml") == named_config("tutorial_mobilenet_v2")
    with pytest.raises(ConfigError) as info:
        named_config("tutorial_resnet")
    assert "tutorial_resnet" in str(info.value) and "tutorial_mobilenet_v2" in str(info.value)


def test_named_config_builds_the_recipes_structure():
    cfg = tutorial_config()
    assert cfg.model.name == "fasterrcnn" and cfg.model.backbone == "mobilenet_v2" and cfg.model.fpn is False
    # The architecture the config implies, without its ImageNet weights (not cached here).
    model = build_from_config(cfg.model, num_classes=2, load_weights=False)
    reference = torchvision.models.mobilenet_v2(weights=None).features
    backbone = model.backbone
    assert backbone.out_channels == 1280
    assert type(backbone) is type(reference) and len(backbone) == len(reference) == 19
    assert [type(m) for m in backbone] == [type(m) for m in reference]
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15]
    assert model.rpn.anchor_generator.sizes == ((32, 64, 128, 256, 512),)
    assert model.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),)
    pool = model.roi_heads.box_roi_pool
    assert pool.featmap_names == ["0"] and pool.output_size == (7, 7) and pool.sampling_ratio == 2
    assert model.roi_heads.box_head.fc6.in_features == 1280 * 7 * 7
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert not model.roi_heads.has_mask() and not model.roi_heads.has_keypoint()
    # As the tutorial's mobilenet_v2(weights="DEFAULT"): ordinary BatchNorm, every parameter trains.
    assert any(type(m) is nn.BatchNorm2d for m in backbone.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    # Same tensors, same names as the recipe's model: a state dict of one loads into the other.
    reference.out_channels = 1280
    recipe = FasterRCNN(reference, num_classes=2,
                        rpn_anchor_generator=AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),)),
                        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2))
    assert {k: v.shape for k, v in recipe.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


# --- anchors and RoIAlign options ---------------------------------------------------------------------


def test_anchor_and_roi_options_reach_the_model_through_the_config():
    cfg = build_config(("test", {**TINY_MODEL, "model.name": "fasterrcnn", "model.backbone": "resnet18",
                                 "model.anchor_sizes": "16,32,64,128,256", "model.aspect_ratios": "1.0,2.0",
                                 "model.roi_output_size": 5, "model.roi_sampling_ratio": 1}))
    model = build_from_config(cfg.model, num_classes=4)
    anchors = model.rpn.anchor_generator
    assert anchors.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert anchors.aspect_ratios == ((1.0, 2.0),) * 5
    assert anchors.num_anchors_per_location() == [2] * 5
    assert model.rpn.head.cls_logits.out_channels == 2
    pool = model.roi_heads.box_roi_pool
    assert pool.output_size == (5, 5) and pool.sampling_ratio == 1
    assert model.roi_heads.box_head.fc6.in_features == 256 * 5 * 5
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    assert model.transform.min_size == (64,) and model.rpn._pre_nms_top_n["training"] == 100


def test_narrow_shallow_pyramid_and_groupnorm_heads_through_the_config():
    """The cpu-scratch levers: a 3-level 64-channel pyramid, conv box head and mask head with GroupNorm."""
    torch.manual_seed(0)
    cfg = build_config(("test", {**TINY_MODEL, "model.name": "maskrcnn", "model.backbone": "resnet18",
                                 "model.norm": "gn", "model.fpn_channels": 64, "model.fpn_levels": 3,
                                 "model.anchor_sizes": "16,32,64,128", "model.head_norm": "gn",
                                 "model.box_head_convs": 2, "model.box_head_dim": 128,
                                 "model.mask_head_channels": 32, "model.mask_hidden": 32}))
    model = build_from_config(cfg.model, num_classes=2)
    with torch.no_grad():
        features = model.backbone.eval()(torch.zeros(1, 3, 64, 64))
    assert list(features) == ["0", "1", "2", "pool"]
    assert [f.shape[-1] for f in features.values()] == [8, 4, 2, 1]  # strides 8, 16, 32, 64
    assert all(f.shape[1] == 64 for f in features.values())
    heads = model.roi_heads
    assert heads.box_roi_pool.featmap_names == heads.mask_roi_pool.featmap_names == ["0", "1", "2"]
    box_norms = [m for m in heads.box_head.modules() if isinstance(m, nn.GroupNorm)]
    mask_norms = [m for m in heads.mask_head.modules() if isinstance(m, nn.GroupNorm)]
    assert len(box_norms) == 2 and len(mask_norms) == 4
    assert heads.box_predictor.cls_score.in_features == 128
    assert heads.mask_predictor.conv5_mask.in_channels == 32
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    losses = train_step(model, ["roi_heads.mask_predictor.mask_fcn_logits.weight",
                                "roi_heads.box_head.0.0.weight", "roi_heads.mask_head.0.0.weight"], masks=True)
    assert "loss_mask" in losses


def test_default_heads_keep_torchvisions_layout():
    """Without the head options, the composed Mask R-CNN's state dict is torchvision's (files stay loadable)."""
    model = build_model("maskrcnn", num_classes=2, backbone="resnet18", **SCRATCH, **SMALL)
    state = model.state_dict()
    assert state["roi_heads.box_head.fc6.weight"].shape == (1024, 256 * 7 * 7)
    assert state["roi_heads.mask_head.0.0.weight"].shape == (256, 256, 3, 3)
    assert state["roi_heads.mask_predictor.conv5_mask.weight"].shape[0] == 256


def test_pyramid_levels_are_checked():
    with pytest.raises(ConfigError, match=r"fpn_levels must be 1-4 for resnet18"):
        build_model("fasterrcnn", num_classes=2, backbone="resnet18", fpn_levels=5, **SCRATCH)


def test_single_map_takes_every_anchor_size():
    model = build_model("fasterrcnn", num_classes=2, backbone="resnet18", fpn=False, anchor_sizes=[64, 128],
                        aspect_ratios=[0.25, 1.0, 4.0], roi_output_size=4, **SCRATCH, **SMALL)
    assert model.rpn.anchor_generator.sizes == ((64, 128),)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [6]
    train_step(model, ["rpn.head.cls_logits.weight"])


def test_fpn_needs_one_anchor_size_per_level():
    with pytest.raises(ConfigError, match=r"3 sizes, but the resnet18 FPN has 5 levels \(0, 1, 2, 3, pool\)"):
        build_model("fasterrcnn", num_classes=2, backbone="resnet18", anchor_sizes=[32, 64, 128], **SCRATCH)


# --- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["fasterrcnn", "maskrcnn", "keypointrcnn"])
def test_family_needs_a_backbone(family):
    with pytest.raises(ConfigError) as info:
        build_model(family, num_classes=2, **SCRATCH)
    message = str(info.value)
    assert f"model '{family}' needs --backbone NAME; choose one of" in message
    assert all(name in message for name in BACKBONES)


def test_unknown_backbone_lists_supported_ones():
    with pytest.raises(ConfigError) as info:
        build_model("fasterrcnn", num_classes=2, backbone="vgg16", **SCRATCH)
    assert "'vgg16' is not supported" in str(info.value)
    assert all(name in str(info.value) for name in BACKBONES)


def test_generic_family_has_no_published_weights():
    with pytest.raises(WeightsError, match="no published whole-model weights"):
        build_model("fasterrcnn", num_classes=2, backbone="resnet18", weights="COCO_V1", weights_backbone="none")


def test_norm_choices():
    gn = build_backbone("resnet18", fpn=False, weights_backbone="none", norm="gn")
    assert any(isinstance(m, nn.GroupNorm) for m in gn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    with pytest.raises(ConfigError, match="LayerNorm"):
        build_backbone("convnext_tiny", fpn=True, weights_backbone="none", norm="bn")
    with pytest.raises(ConfigError, match="do not load into GroupNorm"):
        build_backbone("resnet18", fpn=True, weights_backbone="IMAGENET1K_V1", norm="gn")


def test_frozen_stages_under_pretrained_weights():
    """``pretrained=True``: the state a detector is in when whole-model weights are loaded over it."""
    backbone = build_backbone("resnet18", fpn=True, weights_backbone="none", pretrained=True, trainable_layers=2)
    trainable = {n.split(".")[0] for n, p in backbone.body.named_parameters() if p.requires_grad}
    frozen = {n.split(".")[0] for n, p in backbone.body.named_parameters() if not p.requires_grad}
    assert trainable == {"layer3", "layer4"} and frozen == {"conv1", "layer1", "layer2"}
    assert isinstance(backbone.body.bn1, FrozenBatchNorm2d)
    # MobileNetV3 keeps the BatchNorm eps its ImageNet weights were trained with; default 3 of 5 stages train.
    mobile = build_backbone("mobilenet_v3_large", fpn=False, weights_backbone="none", pretrained=True)
    assert {m.eps for m in mobile.modules() if isinstance(m, FrozenBatchNorm2d)} == {1e-3}
    assert [any(p.requires_grad for p in mobile[i].parameters()) for i in (1, 3, 4, 16)] == [False, False, True, True]
    with pytest.raises(ConfigError, match="between 0 and 4 for convnext_tiny"):
        build_backbone("convnext_tiny", fpn=True, weights_backbone="none", pretrained=True, trainable_layers=5)


# --- the command line ---------------------------------------------------------------------------------


def test_train_with_the_named_config(tmp_path):
    data = make_mask_folder(tmp_path / "data")
    run = tmp_path / "run"
    tiny = [f"{k}={v}" for k, v in TINY_MODEL.items()]
    code = main(["train", "--config", "tutorial_mobilenet_v2", "--data", str(data), "--weights-backbone", "none",
                 "--epochs", "1", "--max-iters-per-epoch", "1", "--test-size", "2", "--out", str(run), *tiny])
    assert code == 0
    saved = load_yaml(run / "config.yaml")["model"]
    assert (saved["name"], saved["backbone"], saved["fpn"], saved["anchor_sizes"]) == \
        ("fasterrcnn", "mobilenet_v2", False, [32, 64, 128, 256, 512])
    metrics = json.loads((run / "metrics.json").read_text())[0]["metrics"]
    assert set(metrics) == {"bbox"}  # a box-only model on mask data
    rebuilt, _ = model_from_checkpoint(load_checkpoint(run / "weights" / "best.pt"))
    assert rebuilt.backbone.out_channels == 1280
    assert rebuilt.rpn.anchor_generator.num_anchors_per_location() == [15]


def test_train_with_an_unknown_config_name(tmp_path, capsys):
    code = main(["train", "--config", "tutorial_vgg", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "tutorial_vgg" in err and "tutorial_mobilenet_v2" in err
    assert not (tmp_path / "run").exists()
