"""Backbone weights offline (torch hub cache, a file, clear errors naming the file to place), for
segtune's generic backbones and torchvision's own builders, and Mask R-CNN on MobileNetV3-Large FPN
started from the COCO Faster R-CNN weights.

Pretrained files are state dicts of the right architecture, placed in a temporary TORCH_HOME under
torchvision's official file names; every download fails as it would without a network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import MobileNet_V2_Weights, get_model_weights
from torchvision.models.detection import FasterRCNN_MobileNet_V3_Large_FPN_Weights
from torchvision.ops import FrozenBatchNorm2d

from segtune.checkpoint import load_checkpoint, save_checkpoint
from segtune.config import build_config
from segtune.errors import ConfigError, WeightsError
from segtune.models import MODELS, build_from_config, build_model, model_from_checkpoint
from segtune.models.backbones import build_backbone
from segtune.models.weights import resolve_backbone_weights
from tests.conftest import TINY_MODEL
from tests.models.helpers import SCRATCH, SMALL, SMALL_INPUT, official_file, place, train_step, tutorial_config

MOBILENET_V2_V1 = MobileNet_V2_Weights.IMAGENET1K_V1
COCO_MOBILENET = FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1


@pytest.fixture(scope="module")
def mobilenet_v2_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    state["features.0.0.weight"].fill_(0.0123)
    state["features.18.1.running_var"].fill_(2.5)
    return state


@pytest.mark.parametrize("spec", ["IMAGENET1K_V1", "DEFAULT"])
def test_backbone_weights_from_the_hub_cache(offline, mobilenet_v2_state, spec):
    place(offline, MOBILENET_V2_V1, mobilenet_v2_state)
    backbone = build_backbone("mobilenet_v2", fpn=False, weights_backbone=spec)
    got = backbone.state_dict()
    for key, value in mobilenet_v2_state.items():
        if key.startswith("features.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(got[key.removeprefix("features.")], value), key
    assert torch.all(backbone[0][0].weight == 0.0123)
    # Pretrained: frozen statistics, the first two of five stages frozen.
    assert isinstance(backbone[18][1], FrozenBatchNorm2d)
    assert not backbone[0][0].weight.requires_grad and backbone[18][0].weight.requires_grad


def test_backbone_weights_reach_the_detector_and_its_fpn(offline, mobilenet_v2_state):
    place(offline, MOBILENET_V2_V1, mobilenet_v2_state)
    model = build_model("fasterrcnn", num_classes=2, weights="none", weights_backbone="IMAGENET1K_V1",
                        backbone="mobilenet_v2", **SMALL)
    assert torch.equal(model.backbone.body["0"][0].weight, mobilenet_v2_state["features.0.0.weight"])
    assert torch.equal(model.backbone.body["18"][1].running_var, mobilenet_v2_state["features.18.1.running_var"])


def test_backbone_weights_from_a_file(tmp_path, mobilenet_v2_state, offline):
    path = tmp_path / "my_mobilenet.pth"
    torch.save({"model": mobilenet_v2_state}, path)
    backbone = build_backbone("mobilenet_v2", fpn=True, weights_backbone=str(path))
    assert torch.all(backbone.body["0"][0].weight == 0.0123)
    bad = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), bad)
    with pytest.raises(WeightsError, match="does not fit the mobilenet_v2 backbone") as info:
        build_backbone("mobilenet_v2", fpn=True, weights_backbone=str(bad))
    assert str(bad) in str(info.value)


def test_missing_backbone_weights_name_the_file_to_place(offline):
    expected = official_file(offline, MOBILENET_V2_V1)
    with pytest.raises(WeightsError) as info:
        build_backbone("mobilenet_v2", fpn=False, weights_backbone="IMAGENET1K_V1")
    assert str(expected) in str(info.value)
    assert MOBILENET_V2_V1.url in str(info.value)
    # The named config asks for the tutorial's IMAGENET1K_V2 file.
    v2 = official_file(offline, MobileNet_V2_Weights.IMAGENET1K_V2)
    with pytest.raises(WeightsError, match=str(v2)):
        build_from_config(tutorial_config().model, num_classes=2)


def test_unknown_backbone_weights_name():
    with pytest.raises(WeightsError, match="--weights-backbone 'IMAGENET9K' is neither a weights name for resnet18"):
        build_backbone("resnet18", fpn=True, weights_backbone="IMAGENET9K")


def test_no_weights_loaded_when_only_the_architecture_is_wanted(offline):
    # load_weights=False: rebuilding a checkpoint must not need the file, but must pick the same norm.
    backbone = build_backbone("mobilenet_v2", fpn=False, weights_backbone="IMAGENET1K_V1", load_weights=False)
    assert isinstance(backbone[18][1], FrozenBatchNorm2d)


# --- whole-model files for the generic families -------------------------------------------------------


def test_fasterrcnn_file_into_maskrcnn_family(tmp_path, caplog):
    torch.manual_seed(0)
    source = build_model("fasterrcnn", num_classes=3, backbone="resnet18", **SCRATCH, **SMALL)
    state = source.state_dict()
    path = tmp_path / "fasterrcnn_resnet18.pt"
    torch.save({"model": state, "classes": ["a", "b"]}, path)
    with caplog.at_level("INFO"):
        model = build_model("maskrcnn", num_classes=2, weights=str(path), weights_backbone="none",
                            backbone="resnet18", **SMALL)
    got = model.state_dict()
    for key, value in state.items():
        if key.startswith("roi_heads.box_predictor.") or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(got[key], value), key
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert "roi_heads.mask_head" in caplog.text and "start new" in caplog.text
    # Whole-model weights count as pretrained: frozen BatchNorm.
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)


def test_file_of_another_backbone_does_not_fit(tmp_path):
    source = build_model("fasterrcnn", num_classes=2, backbone="mobilenet_v3_small", **SCRATCH, **SMALL)
    path = tmp_path / "other.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit fasterrcnn") as info:
        build_model("fasterrcnn", num_classes=2, weights=str(path), backbone="resnet18", **SMALL)
    assert str(path) in str(info.value)


# --- Mask R-CNN on torchvision's MobileNetV3-Large FPN --------------------------------------------------


@pytest.fixture(scope="module")
def coco_mobilenet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    source = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, num_classes=91, weights_backbone=None)
    state = source.state_dict()
    for key, value in {"backbone.body.0.0.weight": 0.011, "backbone.fpn.layer_blocks.0.0.weight": -0.022,
                       "rpn.head.conv.0.0.weight": 0.033, "roi_heads.box_head.fc6.weight": -0.0044}.items():
        state[key].fill_(value)
    state["roi_heads.box_predictor.cls_score.weight"][1].fill_(0.5)  # COCO class 1: person
    return state


@pytest.fixture
def coco_mobilenet_home(offline, coco_mobilenet_state) -> Path:
    place(offline, COCO_MOBILENET, coco_mobilenet_state)
    return offline


def test_maskrcnn_mobilenet_loads_fasterrcnn_coco_weights(coco_mobilenet_home, coco_mobilenet_state, caplog):
    with caplog.at_level("INFO"):
        model = build_model("maskrcnn_mobilenet_v3_large_fpn", num_classes=3, weights="DEFAULT", **SMALL)
    got = model.state_dict()
    loaded = [k for k in coco_mobilenet_state
              if not k.startswith("roi_heads.box_predictor.") and not k.endswith("num_batches_tracked")]
    assert len(loaded) > 250
    for key in loaded:
        assert torch.equal(got[key], coco_mobilenet_state[key]), key
    assert torch.all(got["rpn.head.conv.0.0.weight"] == 0.033)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    assert "roi_heads.mask_head" in caplog.text and "roi_heads.box_predictor" in caplog.text
    # torchvision's detector: FPN on the last two stages, 15 anchors per location on '0', '1', 'pool'.
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15, 15, 15]
    assert isinstance(model.backbone.body["1"].block[0][1], FrozenBatchNorm2d)
    assert MODELS.get("maskrcnn_mobilenet_v3_large_fpn").weights_name == "fasterrcnn_mobilenet_v3_large_fpn"
    train_step(model, ["roi_heads.mask_predictor.mask_fcn_logits.weight",
                       "roi_heads.box_predictor.cls_score.weight"], masks=True)


def test_maskrcnn_mobilenet_head_from_coco_person(coco_mobilenet_home, coco_mobilenet_state):
    cfg = build_config(("test", {**TINY_MODEL, "model.name": "maskrcnn_mobilenet_v3_large_fpn",
                                 "model.weights": "DEFAULT", "model.init_head_from_coco": "person"}))
    model = build_from_config(cfg.model, num_classes=2, classes=["pedestrian"])
    cls = model.roi_heads.box_predictor.cls_score.weight
    assert torch.equal(cls[1], coco_mobilenet_state["roi_heads.box_predictor.cls_score.weight"][1])
    assert torch.all(cls[1] == 0.5)


def test_maskrcnn_mobilenet_offline_names_the_file(offline):
    expected = offline / "hub" / "checkpoints" / "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth"
    with pytest.raises(WeightsError) as info:
        build_model("maskrcnn_mobilenet_v3_large_fpn", num_classes=2, weights="DEFAULT", **SMALL)
    assert str(expected) in str(info.value) and "--weights none" in str(info.value)


def test_maskrcnn_mobilenet_checkpoint_rebuilds_offline(coco_mobilenet_home, tmp_path, monkeypatch):
    cfg = build_config(("test", {**TINY_MODEL, "model.name": "maskrcnn_mobilenet_v3_large_fpn",
                                 "model.weights": "DEFAULT", "data.classes": ["a", "b"]}))
    model = build_from_config(cfg.model, num_classes=3)
    path = save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "classes": ["a", "b"],
                                                  "config": cfg.to_dict(), "epoch": 1})
    # Another machine: the COCO file is gone; the checkpoint alone rebuilds the model.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    rebuilt, _ = model_from_checkpoint(load_checkpoint(path))
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_maskrcnn_mobilenet_refuses_custom_backbone_keys():
    cfg = build_config(("test", {"model.name": "maskrcnn_mobilenet_v3_large_fpn", "model.anchor_sizes": "16,32,64"}))
    with pytest.raises(ConfigError, match="model.anchor_sizes: maskrcnn_mobilenet_v3_large_fpn has the fixed"):
        build_from_config(cfg.model, num_classes=2)


# --- backbone-only weights of torchvision's own builders ---------------------------------------------


BACKBONES = {"resnet50": "fcos_resnet50_fpn", "mobilenet_v3_large": "fasterrcnn_mobilenet_v3_large_fpn"}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def backbone_file(request, tmp_path_factory):
    """A TORCH_HOME holding a classification model's IMAGENET1K_V1 file (random values, the right keys)."""
    name = request.param
    torch.manual_seed(11)
    state = torchvision.models.get_model(name, weights=None).state_dict()
    home = tmp_path_factory.mktemp("torch_home")
    path = place(home, get_model_weights(name).IMAGENET1K_V1, state)
    yield name, home, state, path
    path.unlink()


def body_key(backbone: str, key: str) -> str | None:
    """Where a classification model's key lives in the detector (None: cut off, e.g. the classifier)."""
    if backbone.startswith("mobilenet"):
        return f"backbone.body.{key[len('features.'):]}" if key.startswith("features.") else None
    return None if key.startswith("fc.") else f"backbone.body.{key}"


@pytest.mark.parametrize("spec", ["DEFAULT", "IMAGENET1K_V1", "path"])
def test_backbone_weights_load_into_the_body(backbone_file, spec, monkeypatch, no_download):
    backbone, home, state, path = backbone_file
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert resolve_backbone_weights(backbone, "DEFAULT").name == "IMAGENET1K_V1"
    model = build_model(BACKBONES[backbone], num_classes=3, weights="none",
                        weights_backbone=str(path) if spec == "path" else spec, **SMALL_INPUT)
    got = model.state_dict()
    mapped = {body_key(backbone, k): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    mapped.pop(None, None)
    assert len(mapped) > 100
    for key, value in mapped.items():
        assert torch.equal(got[key], value), key
    # Pretrained backbone: frozen BatchNorm, default eps, first stages frozen.
    frozen = [m for m in model.backbone.body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(m.eps == 1e-5 for m in frozen)
    flags = [p.requires_grad for p in model.backbone.body.parameters()]
    assert not flags[0] and flags[-1]
    # The FPN and heads start from random initialisation.
    assert not any(k.startswith("backbone.fpn.") for k in mapped)


@pytest.mark.parametrize("offline", ["patched", "refused"], indirect=True)
def test_backbone_weights_offline_error_names_the_file(offline):
    expected = official_file(offline, get_model_weights("resnet50").IMAGENET1K_V1)
    with pytest.raises(WeightsError) as info:
        build_model("fcos_resnet50_fpn", num_classes=2, weights="none", weights_backbone="DEFAULT", **SMALL_INPUT)
    assert str(expected) in str(info.value)


def test_backbone_weights_bad_name():
    with pytest.raises(WeightsError, match="--weights-backbone 'IMAGENET9K'") as info:
        build_model("fcos_resnet50_fpn", num_classes=2, weights="none", weights_backbone="IMAGENET9K", **SMALL_INPUT)
    assert "IMAGENET1K_V1" in str(info.value)
