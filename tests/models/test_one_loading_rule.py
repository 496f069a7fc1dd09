"""One ``--weights`` file, one result: every model that can take a file loads it by the same rule.

The same state dict goes into torchvision's detectors (``segtune.models.zoo``) and into the detectors
composed on a custom backbone (``segtune.models.composed``) of the same layout: the tensors they share
load, class-specific layers sized for other classes and heads the file lacks start new, and a file
that does not fit is the same error for all of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segtune.errors import WeightsError
from segtune.models import build_model

SMALL = {"min_size": 64, "max_size": 96}
NO_BACKBONE = {"weights_backbone": "none"}
# Models of one layout (ResNet-50 FPN, torchvision's anchors and box head), built two ways.
RESNET50_FPN = [
    ("fasterrcnn_resnet50_fpn", {}), ("maskrcnn_resnet50_fpn", {}), ("keypointrcnn_resnet50_fpn", {}),
    ("fasterrcnn", {"backbone": "resnet50"}), ("maskrcnn", {"backbone": "resnet50"}),
    ("keypointrcnn", {"backbone": "resnet50"}),
]
MOBILENET_FPN = [("fasterrcnn_mobilenet_v3_large_fpn", {}), ("maskrcnn_mobilenet_v3_large_fpn", {})]
PREDICTORS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.", "roi_heads.keypoint_predictor.")


def _file(tmp_path: Path, name: str, num_classes: int, **kwargs) -> tuple[Path, dict[str, torch.Tensor]]:
    """A state dict of ``name`` whose every float tensor is a value no fresh initialisation gives."""
    torch.manual_seed(1)
    model = build_model(name, num_classes=num_classes, weights="none", **NO_BACKBONE, **SMALL, **kwargs)
    state = {k: (torch.full_like(v, 0.001 * (i % 97 + 1)) if v.is_floating_point() else v)
             for i, (k, v) in enumerate(model.state_dict().items())}
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    return path, state


def _loaded(name: str, kwargs: dict, path: Path, num_classes: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    model = build_model(name, num_classes=num_classes, weights=str(path), **SMALL, **kwargs)
    return model.state_dict()


def _check_same_result(file_state: dict, got: dict, *, classes_match: bool) -> None:
    shared = [k for k in file_state if k in got and not k.endswith("num_batches_tracked")]
    assert len(shared) > 100
    for key in shared:
        same = torch.equal(got[key], file_state[key])
        if key.startswith(PREDICTORS) and got[key].shape != file_state[key].shape:
            assert not classes_match, key
        else:
            assert same, f"{key} was not loaded from the file"
    # Heads the file lacks start new (their values are not the file's markers).
    for key in set(got) - set(file_state):
        assert key.startswith(("roi_heads.mask_", "roi_heads.keypoint_")), key


@pytest.mark.parametrize("group", [RESNET50_FPN, MOBILENET_FPN], ids=["resnet50-fpn", "mobilenet-v3-fpn"])
def test_one_file_loads_the_same_into_every_model_that_can_take_it(tmp_path: Path, group) -> None:
    source, kwargs = group[0]
    path, state = _file(tmp_path, source, 3, **kwargs)
    backbone_rpn_box = {k: v for k, v in state.items() if not k.startswith(PREDICTORS)}
    for name, kw in group:
        same_classes = _loaded(name, kw, path, 3)
        _check_same_result(state, same_classes, classes_match=True)
        assert torch.equal(same_classes["roi_heads.box_predictor.cls_score.weight"],
                           state["roi_heads.box_predictor.cls_score.weight"]), name
        other_classes = _loaded(name, kw, path, 5)
        _check_same_result(state, other_classes, classes_match=False)
        assert other_classes["roi_heads.box_predictor.cls_score.weight"].shape[0] == 5
        for key in backbone_rpn_box:
            if key in other_classes and not key.endswith("num_batches_tracked"):
                assert torch.equal(other_classes[key], state[key]), (name, key)


def test_a_file_with_heads_the_model_lacks_loads_into_every_model_the_same(tmp_path: Path) -> None:
    """A Mask R-CNN file into Faster R-CNN (torchvision's and the composed one): the mask head is unused."""
    path, state = _file(tmp_path, "maskrcnn_resnet50_fpn", 2)
    for name, kw in [("fasterrcnn_resnet50_fpn", {}), ("fasterrcnn", {"backbone": "resnet50"})]:
        got = _loaded(name, kw, path, 2)
        assert not any(k.startswith("roi_heads.mask_") for k in got)
        for key, value in got.items():
            if not key.endswith("num_batches_tracked"):
                assert torch.equal(value, state[key]), (name, key)


def test_a_file_that_does_not_fit_is_the_same_error_for_every_model(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, "fasterrcnn", 2, backbone="resnet18")  # another trunk: 512 channels, not 2048
    messages = []
    for name, kw in RESNET50_FPN:
        with pytest.raises(WeightsError) as info:
            _loaded(name, kw, path, 2)
        messages.append(str(info.value))
    assert all(str(path) in m and "does not fit" in m for m in messages), messages
