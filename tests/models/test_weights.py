"""Pretrained weights: the hub cache, the offline error, local files, names, and random initialisation.

Whole-model weights of every other family are in test_weights_families.py, backbone-only weights in
test_backbone_weights.py; all are tested the same way: a state dict of the right architecture is placed
in a temporary TORCH_HOME under its official file name.

A COCO-shaped Mask R-CNN state dict (torchvision's layout, FrozenBatchNorm keys, 91 classes) is built
once per module and marked with constant tensors, so equality with the file proves it was loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.hub
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights
from torchvision.ops import FrozenBatchNorm2d

from segtune.config import build_config
from segtune.errors import WeightsError
from segtune.models import (
    build_from_config, build_model, cache_path, load_pretrained, resolve_weights, weights_available,
)
from segtune.models.weights import load_state_dict_file
from tests.models.helpers import SMALL_INPUT, official_file, place

COCO_V1 = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
HEADS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.")
# Tensors set to constants in the file: a fresh random initialisation cannot produce them.
MARKERS = {
    "backbone.body.layer1.0.conv1.weight": 0.0123,  # frozen stage
    "backbone.body.layer4.2.conv3.weight": -0.0456,  # trainable stage
    "backbone.fpn.layer_blocks.0.0.weight": 0.0077,
    "rpn.head.conv.0.0.weight": 0.0031,
    "roi_heads.box_head.fc6.weight": -0.0011,
    "roi_heads.mask_head.0.0.weight": 0.0222,
    "backbone.body.bn1.running_var": 2.5,
    "backbone.body.layer2.0.bn1.running_mean": 0.75,
}


@pytest.fixture(scope="module")
def coco_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    # The official file holds FrozenBatchNorm buffers: no num_batches_tracked.
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    for key, value in MARKERS.items():
        state[key].fill_(value)
    return state


@pytest.fixture(scope="module")
def coco_home(tmp_path_factory, coco_state) -> Path:
    """A TORCH_HOME whose hub cache holds the COCO_V1 file (written once)."""
    home = tmp_path_factory.mktemp("torch_home")
    target = place(home, COCO_V1, coco_state)
    yield home
    target.unlink(missing_ok=True)  # 170 MB: do not leave it in pytest's kept temp folders


@pytest.fixture(scope="module")
def default_model(coco_home) -> nn.Module:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(coco_home))
        mp.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
        return build_model("maskrcnn_resnet50_fpn", num_classes=2, weights="DEFAULT", **SMALL_INPUT)


def assert_body_equal(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every tensor outside the two predictors equals the file's, and the markers are there."""
    got = model.state_dict()
    body = [k for k in state if not k.startswith(HEADS)]
    assert len(body) > 250
    for key in body:
        assert torch.equal(got[key], state[key]), key
    for key, value in MARKERS.items():
        assert torch.all(got[key] == value), key
    # Nothing the model has outside the heads was left at its initialisation.
    assert {k for k in got if not k.startswith(HEADS)} == set(body)


def assert_two_class_heads(model: nn.Module) -> None:
    box, mask = model.roi_heads.box_predictor, model.roi_heads.mask_predictor
    assert box.cls_score.out_features == 2 and box.cls_score.in_features == 1024
    assert box.bbox_pred.out_features == 8
    assert mask.mask_fcn_logits.out_channels == 2
    assert mask.conv5_mask.in_channels == 256


def test_cache_path_follows_torch_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert cache_path(COCO_V1) == tmp_path / "hub" / "checkpoints" / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"


def test_default_loads_from_hub_cache(default_model, coco_state):
    assert_body_equal(default_model, coco_state)
    assert_two_class_heads(default_model)


def test_default_uses_frozen_batchnorm_with_coco_v1_eps(default_model):
    body = default_model.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert isinstance(body.layer3[0].downsample[1], FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in default_model.modules())
    frozen = [m for m in default_model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 53
    assert all(m.eps == 0.0 for m in frozen)
    # Three trainable ResNet stages by default under pretrained weights.
    assert not body.conv1.weight.requires_grad
    assert not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad


def test_default_model_runs(default_model):
    default_model.eval()
    with torch.inference_mode():
        (out,) = default_model([torch.rand(3, 70, 90)])
    assert set(out) == {"boxes", "labels", "scores", "masks"}
    assert out["masks"].shape[1:] == (1, 70, 90)
    assert out["labels"].numel() == 0 or set(out["labels"].tolist()) <= {1}


def test_coco_v1_by_name_sets_eps(coco_home, coco_state, monkeypatch, no_download):
    monkeypatch.setenv("TORCH_HOME", str(coco_home))
    assert resolve_weights("maskrcnn_resnet50_fpn", "COCO_V1") is COCO_V1
    assert resolve_weights("maskrcnn_resnet50_fpn", "DEFAULT") is COCO_V1
    model = build_model("maskrcnn_resnet50_fpn", num_classes=3, weights="COCO_V1", **SMALL_INPUT)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    assert torch.equal(model.state_dict()["rpn.head.conv.0.0.weight"], coco_state["rpn.head.conv.0.0.weight"])
    assert all(m.eps == 0.0 for m in model.modules() if isinstance(m, FrozenBatchNorm2d))


def test_weights_available_when_cached(coco_home, monkeypatch, no_download):
    monkeypatch.setenv("TORCH_HOME", str(coco_home))
    assert weights_available(COCO_V1)


# --- no network -------------------------------------------------------------------------------------


@pytest.mark.parametrize("offline", ["patched", "refused"], indirect=True)
def test_offline_default_raises_with_cache_path(offline):
    expected = offline / "hub" / "checkpoints" / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    assert cache_path(COCO_V1) == expected
    with pytest.raises(WeightsError) as info:
        build_model("maskrcnn_resnet50_fpn", num_classes=2, weights="DEFAULT", **SMALL_INPUT)
    message = str(info.value)
    assert str(expected) in message
    assert "--weights" in message and "--weights none" in message
    assert COCO_V1.url in message
    assert not expected.exists()


@pytest.mark.parametrize("offline", ["patched", "refused"], indirect=True)
def test_offline_load_pretrained_and_available(offline, capfd):
    with pytest.raises(WeightsError, match="could not download"):
        load_pretrained(COCO_V1, progress=False)
    assert weights_available(COCO_V1) is False
    # The quiet probe prints nothing of torch hub's own ("Downloading: ..."): segtune's line says what happened.
    assert "Downloading" not in capfd.readouterr().err


# --- local files ------------------------------------------------------------------------------------


def test_coco_shaped_file_by_path_gets_new_heads(coco_home, coco_state, no_download):
    path = official_file(coco_home, COCO_V1)
    assert resolve_weights("maskrcnn_resnet50_fpn", str(path)) == path
    model = build_model("maskrcnn_resnet50_fpn", num_classes=2, weights=str(path), **SMALL_INPUT)
    assert_body_equal(model, coco_state)
    assert_two_class_heads(model)
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)


def test_file_with_matching_classes_keeps_heads(tmp_path, coco_state, no_download):
    """A segtune checkpoint (state dict under 'model') for 2 classes: its heads are loaded, not replaced."""
    state = dict(coco_state)
    state["roi_heads.box_predictor.cls_score.weight"] = torch.full((2, 1024), 0.5)
    state["roi_heads.box_predictor.cls_score.bias"] = torch.tensor([0.1, -0.2])
    state["roi_heads.box_predictor.bbox_pred.weight"] = torch.full((8, 1024), -0.25)
    state["roi_heads.box_predictor.bbox_pred.bias"] = torch.arange(8, dtype=torch.float32)
    state["roi_heads.mask_predictor.mask_fcn_logits.weight"] = torch.full((2, 256, 1, 1), 0.125)
    state["roi_heads.mask_predictor.mask_fcn_logits.bias"] = torch.tensor([0.3, 0.4])
    path = tmp_path / "best.pt"
    torch.save({"format_version": 1, "model": state, "classes": ["pedestrian"], "config": {}, "epoch": 3}, path)
    try:
        model = build_model("maskrcnn_resnet50_fpn", num_classes=2, weights=str(path), **SMALL_INPUT)
    finally:
        path.unlink()
    got = model.state_dict()
    assert set(got) == set(state)
    for key, value in state.items():
        assert torch.equal(got[key], value), key
    assert_two_class_heads(model)


def test_file_that_does_not_fit(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"backbone.something.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="does not fit maskrcnn_resnet50_fpn") as info:
        build_model("maskrcnn_resnet50_fpn", num_classes=2, weights=str(path), **SMALL_INPUT)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"this is not a weights file\n", b"PK\x03\x04truncated zip", b""])
def test_garbage_file_names_path(tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        build_model("maskrcnn_resnet50_fpn", num_classes=2, weights=str(path), **SMALL_INPUT)
    assert str(path) in str(info.value)
    assert "not a loadable weights file" in str(info.value)


class Custom:
    def __init__(self) -> None:
        self.payload = torch.zeros(2)


@pytest.mark.parametrize("obj", [
    {"a": 1, "b": "text"},  # not tensors
    {},  # empty
    [torch.zeros(2)],  # not a dict
    {"model": {"x": 1}},  # 'model' holding no tensors
])
def test_load_state_dict_file_rejects_non_state_dicts(tmp_path, obj):
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    with pytest.raises(WeightsError, match="holds no state dict of tensors") as info:
        load_state_dict_file(path)
    assert str(path) in str(info.value)


def test_load_state_dict_file_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save(Custom(), path)
    with pytest.raises(WeightsError, match="not a loadable weights file") as info:
        load_state_dict_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["model", "state_dict", None])
def test_load_state_dict_file_unwraps(tmp_path, key):
    inner = {"w": torch.arange(3.0), "b": torch.ones(1)}
    path = tmp_path / "w.pth"
    torch.save({key: inner, "epoch": 1} if key else inner, path)
    got = load_state_dict_file(path)
    assert set(got) == {"w", "b"} and torch.equal(got["w"], inner["w"])


def test_load_state_dict_file_missing(tmp_path):
    with pytest.raises(WeightsError, match="not found") as info:
        load_state_dict_file(tmp_path / "absent.pth")
    assert str(tmp_path / "absent.pth") in str(info.value)


def test_path_with_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "w.pth").write_bytes(b"x")
    assert resolve_weights("maskrcnn_resnet50_fpn", "~/w.pth") == tmp_path / "w.pth"


# --- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["COCO_V9", "coco_v1", "/no/such/file.pth"])
def test_unknown_name_lists_valid_names(spec):
    with pytest.raises(WeightsError) as info:
        build_model("maskrcnn_resnet50_fpn", num_classes=2, weights=spec, **SMALL_INPUT)
    message = str(info.value)
    assert spec in message
    for name in ("DEFAULT", "COCO_V1", "none"):
        assert name in message
    assert "nor an existing file" in message


@pytest.mark.parametrize("spec", ["none", "None", "", None])
def test_no_weights_specs(spec):
    assert resolve_weights("maskrcnn_resnet50_fpn", spec) is None


def test_none_builds_trainable_batchnorm(monkeypatch, no_download, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached: nothing may be read
    torch.manual_seed(0)
    model = build_model("maskrcnn_resnet50_fpn", num_classes=2, weights="none", **SMALL_INPUT)
    body = model.backbone.body
    assert type(body.bn1) is nn.BatchNorm2d
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert body.bn1.weight.requires_grad and body.conv1.weight.requires_grad  # all 5 stages trainable
    assert all(p.requires_grad for p in model.parameters())
    assert_two_class_heads(model)
    assert model.transform.min_size == (64,) and model.transform.max_size == 96
    # A random init, not the marked weights.
    assert not torch.all(model.state_dict()["rpn.head.conv.0.0.weight"] == MARKERS["rpn.head.conv.0.0.weight"])
    assert not any(tmp_path.iterdir())


def test_official_file_by_path_matches_default_eps(coco_home, no_download):
    path = official_file(coco_home, COCO_V1)
    model = build_model("maskrcnn_resnet50_fpn", num_classes=2, weights=str(path), **SMALL_INPUT)
    assert all(m.eps == 0.0 for m in model.modules() if isinstance(m, FrozenBatchNorm2d))


def test_backbone_weights_ignored_under_whole_model_weights(coco_home, coco_state, monkeypatch, no_download):
    """Whole-model weights win: --weights-backbone is not even looked for (its file is absent)."""
    monkeypatch.setenv("TORCH_HOME", str(coco_home))
    model = build_model("maskrcnn_resnet50_fpn", num_classes=2, weights="DEFAULT", weights_backbone="DEFAULT", **SMALL_INPUT)
    assert torch.equal(model.state_dict()["backbone.body.conv1.weight"], coco_state["backbone.body.conv1.weight"])


def test_mask_upsampling_layer_kept_from_coco(default_model, coco_state):
    """Only the per-class mask logits are new: the mask predictor's up-sampling layer is the file's."""
    got = default_model.state_dict()
    for key in ("roi_heads.mask_predictor.conv5_mask.weight", "roi_heads.mask_predictor.conv5_mask.bias"):
        assert torch.equal(got[key], coco_state[key]), key


def test_init_head_from_coco_starts_from_the_person_rows(coco_home, coco_state, monkeypatch, no_download):
    """build_from_config hands the COCO categories and the pretrained state to the head transfer."""
    monkeypatch.setenv("TORCH_HOME", str(coco_home))
    cfg = build_config(("test", {"model.init_head_from_coco": "person", "model.min_size": 64, "model.max_size": 96}))
    model = build_from_config(cfg.model, num_classes=2, classes=["pedestrian"])
    got = model.state_dict()
    person = COCO_V1.meta["categories"].index("person")
    for key, rows in (("roi_heads.box_predictor.cls_score.weight", [0, person]),
                      ("roi_heads.box_predictor.bbox_pred.weight", [0, 1, 2, 3, 4 * person, 4 * person + 1,
                                                                     4 * person + 2, 4 * person + 3]),
                      ("roi_heads.mask_predictor.mask_fcn_logits.weight", [0, person])):
        assert torch.equal(got[key], coco_state[key][rows]), key
