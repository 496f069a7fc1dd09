"""evaluate_model: a tiny random Mask R-CNN for the plumbing, and a perfect stub model that must score 1.0."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from segtune.data import MaskFolderDataset, build_transforms
from segtune.evaluation import STAT_NAMES, EvalReport, dataset_ground_truth, evaluate_model, primary_metric
from segtune.models import build_model

CLASSES = ["pedestrian"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("maskrcnn_resnet50_fpn", num_classes=2, weights="none", min_size=64, max_size=96,
                       box_detections_per_img=20, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=25)


@pytest.fixture
def dataset(mask_folder) -> MaskFolderDataset:
    return MaskFolderDataset(mask_folder, transforms=build_transforms(train=False))


class _RoIHeads:
    def __init__(self, masks: bool) -> None:
        self.masks = masks

    def has_mask(self) -> bool:
        return self.masks


class OracleModel(nn.Module):
    """Returns each image's ground truth as detections with score 1 (masks as float N x 1 x H x W)."""

    def __init__(self, dataset: MaskFolderDataset, *, masks: bool = True, shift: float = 0.0) -> None:
        super().__init__()
        self.roi_heads = _RoIHeads(masks)
        self.with_masks = masks
        self.shift = shift
        self.answers = {}
        for i in range(len(dataset)):
            image, target = dataset[i]
            self.answers[image.numpy().tobytes()] = target
        self.calls = 0
        self.modes: list[bool] = []

    def forward(self, images):
        self.calls += 1
        self.modes.append(self.training)
        outputs = []
        for image in images:
            target = self.answers[image.numpy().tobytes()]
            n = len(target["boxes"])
            out = {
                "boxes": target["boxes"].as_subclass(torch.Tensor).clone() + self.shift,
                "labels": target["labels"].clone(),
                "scores": torch.ones(n),
            }
            if self.with_masks:
                out["masks"] = target["masks"].as_subclass(torch.Tensor).to(torch.float32)[:, None]
            outputs.append(out)
        return outputs


def average_lines(summary: list[str]) -> list[str]:
    return [line for line in summary if line.lstrip().startswith("Average")]


def test_tiny_maskrcnn_report(tiny_model, dataset):
    tiny_model.train()
    report = evaluate_model(tiny_model, dataset, CLASSES, device=CPU)
    assert tiny_model.training, "a model in train mode must be put back in train mode"
    assert all(m.training for m in tiny_model.modules())
    assert isinstance(report, EvalReport)
    assert set(report.metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert list(report.metrics[iou_type]) == list(STAT_NAMES)
        for value in report.metrics[iou_type].values():
            assert isinstance(value, float)
            assert value == -1.0 or 0.0 <= value <= 1.0
    assert report.num_images == len(dataset) == 6
    assert 0 <= report.num_detections <= 20 * len(dataset)
    assert primary_metric(report.metrics) == report.metrics["segm"]["AP"]

    # Exactly COCO's 12-line summary per IoU type, headed by its IoU metric line.
    assert report.summary[0] == "IoU metric: bbox"
    assert report.summary[13] == "IoU metric: segm"
    assert len(report.summary) == 26
    assert len(average_lines(report.summary)) == 24
    assert sum(1 for line in report.summary if line.lstrip().startswith("Average Precision")) == 12


def test_eval_mode_model_stays_in_eval(tiny_model, dataset):
    tiny_model.eval()
    evaluate_model(tiny_model, dataset, CLASSES, device=CPU)
    assert not tiny_model.training


@pytest.mark.parametrize("batch_size", [1, 4])
def test_perfect_model_scores_one(dataset, batch_size):
    model = OracleModel(dataset)
    model.train()
    report = evaluate_model(model, dataset, CLASSES, device=CPU, batch_size=batch_size)
    assert model.modes and not any(model.modes), "inference must run in eval mode"
    assert model.training
    assert model.calls == -(-len(dataset) // batch_size)
    n_objects = sum(len(dataset.load(i)[1]["boxes"]) for i in range(len(dataset)))
    assert n_objects > 0 and report.num_detections == n_objects
    for iou_type in ("bbox", "segm"):
        assert report.metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert report.metrics[iou_type]["AP50"] == pytest.approx(1.0)
        assert report.metrics[iou_type]["AR100"] == pytest.approx(1.0)
    assert primary_metric(report.metrics) == pytest.approx(1.0)


def test_summary_lines_show_the_metrics(dataset):
    """The 12 shown lines are COCO's 12 stats, in STAT_NAMES order (not faster-coco-eval's two extra ones)."""
    # Boxes shifted by 3 px: an imperfect bbox score that differs per IoU threshold; masks stay exact.
    report = evaluate_model(OracleModel(dataset, shift=3.0), dataset, CLASSES, device=CPU)
    assert report.metrics["segm"]["AP"] == pytest.approx(1.0)
    assert report.metrics["bbox"]["AP"] < report.metrics["bbox"]["AP50"]
    for k, iou_type in enumerate(("bbox", "segm")):
        lines = report.summary[13 * k + 1: 13 * k + 13]
        shown = [float(re.search(r"=\s*(-?[0-9.]+)\s*$", line).group(1)) for line in lines]
        expected = [report.metrics[iou_type][name] for name in STAT_NAMES]
        assert shown == pytest.approx(expected, abs=6e-4)  # printed with 3 decimals
        assert "maxDets=  1" in lines[6] and "area= large" in lines[11]


def test_box_only_model(dataset):
    report = evaluate_model(OracleModel(dataset, masks=False), dataset, CLASSES, device=CPU)
    assert set(report.metrics) == {"bbox"}
    assert report.metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert primary_metric(report.metrics) == report.metrics["bbox"]["AP"]
    assert report.summary[0] == "IoU metric: bbox" and len(report.summary) == 13


def test_precomputed_ground_truth_is_reused(dataset):
    gt = dataset_ground_truth(dataset, CLASSES)
    assert len(gt["images"]) == 6
    assert [img["id"] for img in gt["images"]] == [dataset.image_id(i) for i in range(6)]
    assert sum(1 for a in gt["annotations"] if a["image_id"] == dataset.image_id(0)) == 0  # image 0 is empty
    first = evaluate_model(OracleModel(dataset, shift=2.0), dataset, CLASSES, device=CPU, gt=gt)
    second = evaluate_model(OracleModel(dataset, shift=2.0), dataset, CLASSES, device=CPU, gt=gt)
    fresh = evaluate_model(OracleModel(dataset, shift=2.0), dataset, CLASSES, device=CPU)
    assert first.metrics == second.metrics == fresh.metrics


def test_mask_threshold_is_applied(dataset):
    """Mask probabilities of 0.4 are background at the default threshold and foreground at 0.3."""

    class Dim(OracleModel):
        def forward(self, images):
            outputs = super().forward(images)
            for out in outputs:
                out["masks"] = out["masks"] * 0.4
            return outputs

    at_default = evaluate_model(Dim(dataset), dataset, CLASSES, device=CPU)
    assert at_default.metrics["segm"]["AP"] == 0.0
    assert at_default.metrics["bbox"]["AP"] == pytest.approx(1.0)
    lowered = evaluate_model(Dim(dataset), dataset, CLASSES, device=CPU, mask_threshold=0.3)
    assert lowered.metrics["segm"]["AP"] == pytest.approx(1.0)
