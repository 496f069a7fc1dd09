"""Head transfer from COCO classes: parsing --init-head-from-coco, and copied rows equal the pretrained ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn, retinanet_resnet50_fpn_v2

from segtune.checkpoint import load_checkpoint
from segtune.cli.main import main
from segtune.errors import ConfigError
from segtune.models import build_model
from segtune.models.transfer import parse_coco_mapping, transfer_head_rows
from tests.conftest import TINY_MODEL, make_mask_folder

COCO = list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
PERSON, BICYCLE, CAR = COCO.index("person"), COCO.index("bicycle"), COCO.index("car")
TINY = {k.split(".", 1)[1]: v for k, v in TINY_MODEL.items() if k != "model.weights"}

CLS = "roi_heads.box_predictor.cls_score"
BOX = "roi_heads.box_predictor.bbox_pred"
MASK = "roi_heads.mask_predictor.mask_fcn_logits"


# --- parsing --------------------------------------------------------------------------------------


def test_one_class_from_a_bare_name() -> None:
    assert parse_coco_mapping("person", ["pedestrian"], COCO) == [0, PERSON]


def test_pairs_name_coco_classes_and_leave_the_rest_random() -> None:
    rows = parse_coco_mapping("pedestrian=person, Bike = Bicycle", ["pedestrian", "dog", "bike"], COCO)
    assert rows == [0, PERSON, -1, BICYCLE]
    # A bare name among several classes maps the class of that name.
    assert parse_coco_mapping("person,car", ["person", "tree", "car"], COCO) == [0, PERSON, -1, CAR]


@pytest.mark.parametrize("spec, classes, expected", [
    ("persn", ["pedestrian"], "'persn' is not a class of the pretrained weights; did you mean 'person'?"),
    ("ped=bicycel", ["ped"], "did you mean 'bicycle'"),
    ("ped=xyzzy", ["ped"], "its classes are: person, bicycle, car,"),
    ("N/A", ["ped"], "'N/A' is not a class"),
    ("__background__", ["ped"], "'__background__' is not a class"),
    ("pedestrain=person", ["pedestrian", "car"], "'pedestrain' is not a class of the data set (classes: pedestrian, "
                                                 "car); did you mean 'pedestrian'?"),
    ("person", ["pedestrian", "car"], "the data set has 2 classes (pedestrian, car): write pairs"),
    ("car=car,CAR=bus", ["car"], "class 'car' is named twice"),
    (" , ", ["car"], "empty"),
])
def test_bad_specs_are_config_errors_that_say_why(spec: str, classes: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_coco_mapping(spec, classes, COCO)
    assert "model.init_head_from_coco" in str(info.value) and expected in str(info.value)


# --- copying, through the real builder ------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A "COCO-pretrained" Mask R-CNN: torchvision's architecture with 91 classes and random weights."""
    torch.manual_seed(0)
    state = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    path = tmp_path_factory.mktemp("weights") / "coco_like_maskrcnn.pth"
    torch.save(state, path)
    return path, state


def test_copied_rows_equal_the_pretrained_rows(pretrained_file) -> None:
    path, source = pretrained_file
    head_rows = [0, PERSON, -1, CAR]
    model = build_model("maskrcnn_resnet50_fpn", num_classes=4, weights=str(path), head_rows=head_rows, **TINY)
    state = model.state_dict()
    assert state[f"{CLS}.weight"].shape == (4, 1024) and state[f"{MASK}.weight"].shape[0] == 4
    for label, row in enumerate(head_rows):
        same = row >= 0
        for key, block in ((CLS, 1), (BOX, 4), (MASK, 1)):
            for kind in ("weight", "bias"):
                ours = state[f"{key}.{kind}"][label * block:(label + 1) * block]
                theirs = source[f"{key}.{kind}"][max(row, 0) * block:(max(row, 0) + 1) * block]
                assert torch.equal(ours, theirs) == same, (key, kind, label)
    # Everything else is the pretrained model's, untouched.
    for key in ("backbone.body.layer4.2.conv3.weight", "roi_heads.mask_head.0.0.weight", "rpn.head.conv.0.0.weight"):
        assert torch.equal(state[key], source[key])


def test_without_head_rows_the_new_heads_are_random(pretrained_file) -> None:
    path, source = pretrained_file
    state = build_model("maskrcnn_resnet50_fpn", num_classes=2, weights=str(path), **TINY).state_dict()
    assert not torch.equal(state[f"{CLS}.weight"][1], source[f"{CLS}.weight"][PERSON])


def test_retinanet_copies_each_anchors_class_channels() -> None:
    """RetinaNet's cls_logits are anchor-major (channel a * C + c) and have no background to copy."""
    torch.manual_seed(0)
    source = retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91).state_dict()
    model = retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=3)
    # As the builder does: everything but the class layer comes from the pretrained weights.
    model.load_state_dict({k: v for k, v in source.items() if ".cls_logits." not in k}, strict=False)
    touched = transfer_head_rows(source, model, [0, CAR, PERSON])
    assert touched == ["head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"]
    weight = model.head.classification_head.cls_logits.weight
    theirs = source["head.classification_head.cls_logits.weight"]
    anchors = model.head.classification_head.num_anchors
    assert weight.shape[0] == anchors * 3
    for a in range(anchors):
        assert torch.equal(weight[a * 3 + 1], theirs[a * 91 + CAR])
        assert torch.equal(weight[a * 3 + 2], theirs[a * 91 + PERSON])
        assert not torch.equal(weight[a * 3], theirs[a * 91])
    # The layout is the one the head reads: class 1 of the new model scores like COCO's car.
    features = [torch.randn(1, 256, 4, 4)]
    ours = model.head.classification_head(features)
    ref = retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91)
    ref.load_state_dict(source)
    expected = ref.head.classification_head(features)
    assert torch.allclose(ours[..., 1], expected[..., CAR], atol=1e-5)
    assert torch.allclose(ours[..., 2], expected[..., PERSON], atol=1e-5)


# --- the command line -----------------------------------------------------------------------------


def test_cli_flag_starts_training_from_the_person_rows(tmp_path: Path, pretrained_file) -> None:
    path, source = pretrained_file
    data = make_mask_folder(tmp_path / "data", n=4)
    run = tmp_path / "run"
    code = main(["train", "--data", str(data), "--out", str(run), "--weights", str(path),
                 "--init-head-from-coco", "person", "--epochs", "1", "--max-iters-per-epoch", "1", "--test-size", "2",
                 "--lr", "0.000000000001", *[f"{k}={v}" for k, v in TINY_MODEL.items() if k != "model.weights"]])
    assert code == 0
    state = load_checkpoint(run / "weights" / "best.pt")["model"]
    for key, block in ((CLS, 1), (BOX, 4), (MASK, 1)):
        ours = state[f"{key}.weight"]
        assert ours.shape[0] == 2 * block
        # After one step at lr 1e-12 the rows are still the pretrained background and person rows.
        torch.testing.assert_close(ours[:block], source[f"{key}.weight"][:block], atol=1e-6, rtol=0)
        torch.testing.assert_close(ours[block:], source[f"{key}.weight"][PERSON * block:(PERSON + 1) * block],
                                   atol=1e-6, rtol=0)


def test_cli_unknown_coco_name_exits_2_with_suggestion(tmp_path: Path, pretrained_file,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = pretrained_file
    data = make_mask_folder(tmp_path / "data", n=4)
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--weights", str(path),
                 "--init-head-from-coco", "persn", "--epochs", "1", "--test-size", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "segtune: error:" in err and "did you mean 'person'?" in err
    assert not (tmp_path / "run").exists()
