"""Every registered model: builds from a config, trains a step, predicts, and survives a checkpoint round trip.

Parametrised over ``MODELS.names()`` so each new registry entry is covered. Models are built once per
module from random initialisation (``weights none``) at tiny sizes and shared by the tests.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from segtune.checkpoint import load_checkpoint, save_checkpoint
from segtune.config import Config, build_config
from segtune.errors import ConfigError, WeightsError
from segtune.models import MODELS, build_from_config, build_model, default_weights, model_from_checkpoint
from segtune.models.heads import num_classes_of, num_keypoints_of
from tests.conftest import TINY_MODEL

CLASSES = ["box", "disc"]
NUM_KEYPOINTS = 5
#: The custom-backbone families need a backbone; a small one keeps the test fast.
CUSTOM = {"fasterrcnn", "maskrcnn", "keypointrcnn"}
EXPECTED_KEYS = {
    "detection": {"boxes", "labels", "scores"},
    "instance-segmentation": {"boxes", "labels", "scores", "masks"},
    "keypoints": {"boxes", "labels", "scores", "keypoints", "keypoints_scores"},
}
#: The output layers the builder makes new for the user's classes / keypoints.
NEW_HEADS = (
    "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight",
    "roi_heads.mask_predictor.mask_fcn_logits.weight", "roi_heads.keypoint_predictor.kps_score_lowres.weight",
    "head.classification_head.cls_logits.weight",
)


def tiny_config(name: str, **extra) -> Config:
    flags = {**TINY_MODEL, "model.name": name, "data.classes": CLASSES, **extra}
    if name in CUSTOM:
        flags["model.backbone"] = "mobilenet_v2"
    return build_config(("test", flags))


def make_batch(task: str, seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 64x80 images with one and two bright rectangles, and targets for ``task``."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for n in (1, 2):
        image = torch.rand(3, 64, 80, generator=g) * 0.2
        boxes = torch.tensor([[6.0, 8.0, 40.0, 44.0], [36.0, 20.0, 74.0, 58.0]][:n])
        masks = torch.zeros(n, 64, 80, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            image[:, y0:y1, x0:x1] = 0.9
            masks[i, y0:y1, x0:x1] = 1
        target = {"boxes": boxes, "labels": torch.tensor([1, 2][:n])}
        if task == "instance-segmentation":
            target["masks"] = masks
        if task == "keypoints":
            x = boxes[:, None, 0] + (boxes[:, None, 2] - boxes[:, None, 0]) * torch.linspace(0.1, 0.9, NUM_KEYPOINTS)
            y = boxes[:, None, 1] + (boxes[:, None, 3] - boxes[:, None, 1]) * torch.linspace(0.9, 0.1, NUM_KEYPOINTS)
            target["keypoints"] = torch.stack([x, y, torch.full_like(x, 2.0)], dim=-1)  # [N, K, 3], visible
        images.append(image)
        targets.append(target)
    return images, targets


@pytest.fixture(scope="module", params=MODELS.names())
def built(request) -> tuple[str, nn.Module, Config]:
    """Each registered model, built once from its tiny config; pytest runs one model's tests together and
    drops the model before building the next (thirteen R-50 models at once would not fit a small machine)."""
    name = request.param
    cfg = tiny_config(name)
    torch.manual_seed(0)
    num_keypoints = NUM_KEYPOINTS if MODELS.get(name).has_keypoints else None
    model = build_from_config(cfg.model, num_classes=len(CLASSES) + 1, classes=CLASSES, num_keypoints=num_keypoints)
    return name, model, cfg


def test_builds_trains_a_step_and_reaches_new_heads(built):
    name, model, _ = built
    spec = MODELS.get(name)
    assert num_classes_of(model) == len(CLASSES) + 1
    if spec.has_keypoints:
        assert num_keypoints_of(model) == NUM_KEYPOINTS
    assert (getattr(getattr(model, "roi_heads", None), "mask_predictor", None) is not None) == spec.has_masks
    model.train()
    images, targets = make_batch(spec.task)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    losses = model(images, targets)
    if spec.has_masks:
        assert "loss_mask" in losses
    if spec.has_keypoints:
        assert "loss_keypoint" in losses
    loss = sum(losses.values())
    assert math.isfinite(loss.item()), losses
    optimizer.zero_grad()
    loss.backward()
    params = dict(model.named_parameters())
    heads = [key for key in NEW_HEADS if key in params]
    assert heads, "no new head found"
    for key in heads:
        grad = params[key].grad
        assert grad is not None and grad.abs().sum() > 0, key
    before = params[heads[0]].detach().clone()
    optimizer.step()
    assert not torch.equal(before, params[heads[0]])


def test_predicts_in_eval_mode(built):
    name, model, _ = built
    spec = MODELS.get(name)
    model.eval()
    images, _ = make_batch(spec.task, seed=1)
    with torch.inference_mode():
        outputs = model(images)
    assert len(outputs) == 2
    for out in outputs:
        assert set(out) == EXPECTED_KEYS[spec.task]
        assert out["boxes"].shape[1:] == (4,)
        if spec.has_keypoints:
            assert out["keypoints"].shape[1:] == (NUM_KEYPOINTS, 3)


def _lower_thresholds(model: nn.Module) -> None:
    # Randomly initialised heads may score below the default thresholds (one-stage logits start at the
    # focal-loss prior 0.01); keep every candidate so the comparison has outputs to compare.
    (model.roi_heads if hasattr(model, "roi_heads") else model).score_thresh = 0.0


def test_checkpoint_round_trip_gives_identical_outputs(built, tmp_path):
    name, model, cfg = built
    spec = MODELS.get(name)
    state = {"model": model.state_dict(), "classes": CLASSES, "config": cfg.to_dict(), "epoch": 1}
    if spec.has_keypoints:
        state["num_keypoints"] = NUM_KEYPOINTS
    path = save_checkpoint(tmp_path / "best.pt", state)
    rebuilt, rebuilt_cfg = model_from_checkpoint(load_checkpoint(path))
    assert rebuilt_cfg.model.name == name
    assert not rebuilt.training
    got = rebuilt.state_dict()
    assert set(got) == set(state["model"])
    for key, value in state["model"].items():
        assert torch.equal(got[key], value), key
    model.eval()
    for m in (model, rebuilt):
        _lower_thresholds(m)
    images, _ = make_batch(spec.task, seed=2)
    with torch.inference_mode():
        expected, actual = model(images), rebuilt(images)
    assert sum(len(o["boxes"]) for o in expected) > 0
    for a, b in zip(expected, actual):
        assert set(a) == set(b)
        for key in a:
            assert torch.equal(a[key], b[key]), key


# --- config and errors ------------------------------------------------------------------------------


def test_unknown_model_lists_registered_names():
    with pytest.raises(ConfigError) as info:
        build_model("maskrcnn_r50", num_classes=2, weights="none")
    message = str(info.value)
    assert "maskrcnn_r50" in message
    for name in MODELS.names():
        assert name in message


@pytest.mark.parametrize("norm", ["layer", "GN"])
def test_bad_norm_is_a_config_error_naming_the_key(norm):
    with pytest.raises(ConfigError, match="model.norm"):
        build_model("fcos_resnet50_fpn", num_classes=2, weights="none", weights_backbone="none", norm=norm)


def test_group_norm_refuses_pretrained_weights():
    with pytest.raises(ConfigError, match="model.norm 'gn'"):
        build_model("fcos_resnet50_fpn", num_classes=2, weights="DEFAULT", norm="gn", load_weights=False)


def test_group_norm_from_scratch():
    model = build_model("fasterrcnn_mobilenet_v3_large_fpn", num_classes=2, weights="none", weights_backbone="none",
                        norm="gn", min_size=64, max_size=96)
    norms = [m for m in model.backbone.body.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert norms and all(isinstance(m, nn.GroupNorm) for m in norms)


@pytest.mark.parametrize("layers", [-1, 6])
def test_trainable_layers_out_of_range(layers):
    with pytest.raises(ConfigError, match="model.trainable_backbone_layers must be between 0 and 5"):
        build_model("fcos_resnet50_fpn", num_classes=2, weights="DEFAULT", load_weights=False,
                    trainable_backbone_layers=layers)


def test_trainable_layers_under_pretrained_weights():
    model = build_model("fasterrcnn_mobilenet_v3_large_fpn", num_classes=2, weights="DEFAULT", load_weights=False)
    frozen = {n.split(".")[0] for n, p in model.backbone.body.named_parameters() if not p.requires_grad}
    trainable = {n.split(".")[0] for n, p in model.backbone.body.named_parameters() if p.requires_grad}
    # MobileNetV3-Large has 6 stages; the default 3 trainable leaves the first blocks frozen.
    assert frozen and trainable and max(map(int, frozen)) < min(map(int, trainable))
    model = build_model("fasterrcnn_mobilenet_v3_large_fpn", num_classes=2, weights="DEFAULT", load_weights=False,
                        trainable_backbone_layers=6)
    assert all(p.requires_grad for p in model.backbone.body.parameters())


def test_zoo_models_refuse_custom_backbone_keys():
    cfg = tiny_config("maskrcnn_resnet50_fpn", **{"model.backbone": "resnet18"})
    with pytest.raises(ConfigError, match="model.backbone is for the custom-backbone models"):
        build_from_config(cfg.model, num_classes=3)


def test_320_model_keeps_its_own_sizes_unless_set():
    cfg = build_config(("test", {"model.name": "fasterrcnn_mobilenet_v3_large_320_fpn"}))
    kwargs = MODELS.get(cfg.model.name).from_config(cfg.model)
    assert "min_size" not in kwargs and "rpn_pre_nms_top_n_test" not in kwargs
    with torch.device("meta"):
        model = build_from_config(cfg.model, num_classes=3, load_weights=False)
    assert model.transform.min_size == (320,) and model.transform.max_size == 640
    assert model.rpn._pre_nms_top_n["testing"] == 150 and model.rpn.score_thresh == 0.05
    cfg = build_config(("test", {"model.name": "fasterrcnn_mobilenet_v3_large_320_fpn", "model.min_size": 256}))
    with torch.device("meta"):
        model = build_from_config(cfg.model, num_classes=3, load_weights=False)
    assert model.transform.min_size == (256,) and model.transform.max_size == 640


def test_one_stage_models_read_detections_per_image():
    cfg = tiny_config("retinanet_resnet50_fpn_v2")
    with torch.device("meta"):
        model = build_from_config(cfg.model, num_classes=3)
    assert model.detections_per_img == 20 and model.transform.min_size == (64,)


def test_init_head_from_coco_needs_whole_model_weights():
    cfg = tiny_config("fasterrcnn_resnet50_fpn", **{"model.init_head_from_coco": "person"})
    with pytest.raises(ConfigError, match="init_head_from_coco needs whole-model COCO weights"):
        build_from_config(cfg.model, num_classes=2, classes=["person"])


def test_mask_hidden_sets_the_new_mask_predictor_width():
    cfg = tiny_config("maskrcnn_resnet50_fpn", **{"model.mask_hidden": 64})
    with torch.device("meta"):
        model = build_from_config(cfg.model, num_classes=3)
    predictor = model.roi_heads.mask_predictor
    assert predictor.conv5_mask.out_channels == 64 and predictor.mask_fcn_logits.out_channels == 3


def test_default_weights_of_every_model():
    for name in MODELS.names():
        spec = MODELS.get(name)
        weights = default_weights(name)
        assert (weights is None) == (spec.weights_name is None), name
        if weights is not None:
            assert weights.name == "COCO_V1"


def test_choose_preset_works_for_every_model(monkeypatch, tmp_path):
    import torch.hub

    from segtune.engine.presets import choose_preset
    from segtune.models import cache_path

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    for name in MODELS.names():
        # The cpu-scratch recipe for its own model; a short schedule for any other model the user names.
        assert choose_preset("cpu", name) == ("cpu-scratch" if name == "maskrcnn" else "cpu-quick"), name
    # With the DEFAULT file in the cache, the pretrained recipe is chosen.
    target = cache_path(default_weights("fcos_resnet50_fpn"))
    target.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, target)
    assert choose_preset("cpu", "fcos_resnet50_fpn") == "tutorial"


def test_missing_weights_file_for_rebuild_does_not_read(tmp_path):
    """load_weights=False accepts a --weights path that is not there (a checkpoint from another machine)."""
    with torch.device("meta"):
        model = build_model("fcos_resnet50_fpn", num_classes=2, weights=str(tmp_path / "gone.pth"), load_weights=False)
    assert num_classes_of(model) == 2
    with pytest.raises(WeightsError, match="nor an existing file"):
        build_model("fcos_resnet50_fpn", num_classes=2, weights=str(tmp_path / "gone.pth"))
