"""Whole-model pretrained weights of every detector family (Faster R-CNN v2, its MobileNetV3 variant,
Keypoint R-CNN, RetinaNet, FCOS): the official file in a temporary hub cache loads, the heads fit the
user's classes, the error offline names the file to place, and a checkpoint's model is rebuilt with the
eps its COCO weights need. The files are state dicts of the right architecture with random values."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights
from torchvision.ops import FrozenBatchNorm2d

from segtune.config import build_config
from segtune.errors import WeightsError
from segtune.models import build_from_config, build_model
from tests.models.helpers import SMALL_INPUT, official_file, place

#: One registered model per family, with the torchvision builder arguments of its COCO file.
FAMILIES = {
    "fasterrcnn_resnet50_fpn_v2": {"num_classes": 91},
    "fasterrcnn_mobilenet_v3_large_fpn": {"num_classes": 91},
    "keypointrcnn_resnet50_fpn": {"num_classes": 2, "num_keypoints": 17},
    "retinanet_resnet50_fpn_v2": {"num_classes": 91},
    "fcos_resnet50_fpn": {"num_classes": 91},
}
#: Layers made new for the user's classes (3) and keypoints (5); everything else comes from the file.
NEW = ("roi_heads.box_predictor.", "roi_heads.keypoint_predictor.", "head.classification_head.cls_logits.")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_file(request, tmp_path_factory):
    """A TORCH_HOME holding a state dict of the family's architecture under its DEFAULT file name."""
    name = request.param
    torch.manual_seed(7)
    reference = torchvision.models.get_model(name, weights=None, weights_backbone=None, **FAMILIES[name])
    state = reference.state_dict()
    del reference
    home = tmp_path_factory.mktemp("torch_home")
    path = place(home, get_model_weights(name).DEFAULT, state)
    yield name, home, state
    path.unlink()


def test_family_default_weights_load_and_heads_fit_the_classes(family_file, monkeypatch, no_download):
    name, home, state = family_file
    monkeypatch.setenv("TORCH_HOME", str(home))
    keypoints = {"num_keypoints": 5} if "keypoint" in name else {}
    model = build_model(name, num_classes=3, weights="DEFAULT", **keypoints, **SMALL_INPUT)
    got = model.state_dict()
    kept = [k for k in got if not k.startswith(NEW)]
    assert len(kept) > 150
    for key in kept:
        assert torch.equal(got[key], state[key]), key
    # The file's extra keys are only BatchNorm counters that frozen BatchNorm does not keep.
    assert all(k.endswith("num_batches_tracked") for k in set(state) - set(got))
    new = [k for k in got if k.startswith(NEW)]
    assert new
    if hasattr(model, "roi_heads"):
        assert model.roi_heads.box_predictor.cls_score.out_features == 3
        assert model.roi_heads.box_predictor.bbox_pred.out_features == 12
    else:
        head = model.head.classification_head
        assert head.num_classes == 3 and head.cls_logits.out_channels == 3 * head.num_anchors
        # The convolution tower in front of the new logits keeps the file's weights.
        assert any(k.startswith("head.classification_head.conv.") for k in kept)
    if keypoints:
        assert model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 5
        assert any(k.startswith("roi_heads.keypoint_head.") for k in kept)
    frozen = [m for m in model.backbone.body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.body.modules())
    # torchvision's overwrite_eps quirk applies to Keypoint R-CNN's COCO_V1 only among these.
    assert all(m.eps == (0.0 if name == "keypointrcnn_resnet50_fpn" else 1e-5) for m in frozen)
    # Pretrained: three backbone stages train, the first ones are frozen.
    flags = [p.requires_grad for p in model.backbone.body.parameters()]
    assert not flags[0] and flags[-1]


@pytest.mark.parametrize("offline", ["patched", "refused"], indirect=True)
def test_family_offline_error_names_the_official_file(family_file, offline):
    name = family_file[0]
    expected = official_file(offline, get_model_weights(name).DEFAULT)
    with pytest.raises(WeightsError) as info:
        build_model(name, num_classes=3, weights="DEFAULT", **SMALL_INPUT)
    assert str(expected) in str(info.value)
    assert not expected.exists()


@pytest.mark.parametrize("name,eps", [
    ("maskrcnn_resnet50_fpn", 0.0), ("fasterrcnn_resnet50_fpn", 0.0), ("keypointrcnn_resnet50_fpn", 0.0),
    ("maskrcnn_resnet50_fpn_v2", 1e-5), ("fcos_resnet50_fpn", 1e-5),
])
def test_rebuilt_from_config_keeps_coco_v1_eps(name, eps, monkeypatch, tmp_path, no_download):
    """A checkpoint's model is rebuilt with the eps its COCO weights need, reading no file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = build_config(("checkpoint config", {"model.name": name, "model.weights": "DEFAULT"}))
    with torch.device("meta"):
        model = build_from_config(cfg.model, num_classes=2, load_weights=False)
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(m.eps == eps for m in frozen)
    assert not any(tmp_path.iterdir())
