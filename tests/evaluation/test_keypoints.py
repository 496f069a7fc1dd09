"""COCO keypoint AP: faster-coco-eval against pycocotools, OKS sigmas, and evaluate_model on keypoint data."""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO as PcCOCO
from pycocotools.cocoeval import COCOeval as PcCOCOeval
from torch import nn

from segtune.config import DataConfig
from segtune.data import build_dataset
from segtune.evaluation import (KEYPOINT_STAT_NAMES, dataset_ground_truth, detections, evaluate_model, ground_truth,
                                primary_metric, score)
from segtune.evaluation.coco_eval import UNIFORM_KEYPOINT_SIGMA
from tests.evaluation.keypoint_data import KEYPOINT_NAMES, SKELETON, make_coco_keypoints

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

H, W = 200, 240
CPU = torch.device("cpu")


def _target(boxes: list[list[float]], keypoints: np.ndarray) -> dict:
    n = len(boxes)
    b = torch.tensor(boxes, dtype=torch.float32).reshape(n, 4)
    return {"boxes": b, "labels": torch.ones(n, dtype=torch.int64),
            "area": ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) * 0.7),  # a person covers part of its box
            "iscrowd": torch.zeros(n, dtype=torch.int64), "keypoints": torch.tensor(keypoints, dtype=torch.float32)}


def synthetic(k: int, seed: int = 7) -> tuple[dict, list[dict]]:
    """GT people with ``k`` keypoints (some unlabelled, one with none) and noisy detections, misses, false positives."""
    rng = np.random.default_rng(seed)
    items, results = [], []
    for image_id in range(1, 9):
        n = 0 if image_id == 4 else int(rng.integers(1, 4))
        boxes, points = [], np.zeros((n, k, 3))
        for j in range(n):
            bw, bh = rng.uniform(30, 110), rng.uniform(40, 150)
            x0, y0 = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
            boxes.append([x0, y0, x0 + bw, y0 + bh])
            points[j, :, 0] = rng.uniform(x0, x0 + bw, k)
            points[j, :, 1] = rng.uniform(y0, y0 + bh, k)
            points[j, :, 2] = rng.choice([0, 1, 2], size=k, p=[0.2, 0.3, 0.5])
        if image_id == 6 and n:
            points[0, :, :] = 0  # a person with no labelled keypoint: COCO ignores it
        target = _target(boxes, points)
        items.append((image_id, f"{image_id}.png", H, W, target))

        det_boxes, det_points = [], []
        for j in range(n):
            if rng.random() < 0.15:
                continue  # missed
            scale = np.sqrt(float(target["area"][j])) * rng.uniform(0.01, 0.15)
            p = points[j].copy()
            p[:, :2] += rng.normal(0, scale, size=(k, 2))
            p[:, 2] = 1
            det_boxes.append(boxes[j])
            det_points.append(p)
        for _ in range(int(rng.integers(0, 3))):  # false positives
            x0, y0 = rng.uniform(0, W - 60), rng.uniform(0, H - 80)
            det_boxes.append([x0, y0, x0 + 60, y0 + 80])
            det_points.append(np.stack([rng.uniform(x0, x0 + 60, k), rng.uniform(y0, y0 + 80, k), np.ones(k)], 1))
        m = len(det_boxes)
        output = {"boxes": torch.tensor(det_boxes, dtype=torch.float32).reshape(m, 4),
                  "labels": torch.ones(m, dtype=torch.int64),
                  "scores": torch.tensor(rng.random(m), dtype=torch.float32),
                  "keypoints": torch.tensor(np.array(det_points), dtype=torch.float32).reshape(m, k, 3),
                  "keypoints_scores": torch.tensor(rng.normal(size=(m, k)), dtype=torch.float32)}
        results.extend(detections(image_id, output))
    names = [f"kp{i}" for i in range(k)]
    return ground_truth(items, ["person"], keypoint_names=names, skeleton=[[1, 2]]), results


def pycocotools_keypoint_stats(gt: dict, results: list[dict], sigmas: list[float] | None) -> list[float]:
    coco_gt = PcCOCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    ev = PcCOCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType="keypoints")
    if sigmas is not None:
        ev.params.kpt_oks_sigmas = np.array(sigmas)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(v) for v in ev.stats]


def test_coco_json_carries_keypoints():
    gt, results = synthetic(3)
    ann = next(a for a in gt["annotations"] if a["image_id"] == 1)
    assert len(ann["keypoints"]) == 9 and ann["num_keypoints"] == sum(1 for v in ann["keypoints"][2::3] if v > 0)
    assert any(a["num_keypoints"] == 0 for a in gt["annotations"])
    assert gt["categories"] == [{"id": 1, "name": "person", "keypoints": ["kp0", "kp1", "kp2"], "skeleton": [[1, 2]]}]
    assert all(len(r["keypoints"]) == 9 and len(r["keypoint_scores"]) == 3 for r in results)


@pytest.mark.parametrize("k, sigmas", [(17, None), (3, None), (3, [0.05, 0.08, 0.12])])
def test_keypoint_ap_matches_pycocotools(k, sigmas, capsys):
    gt, results = synthetic(k)
    ours = score(copy.deepcopy(gt), copy.deepcopy(results), ("keypoints",), print_fn=lambda _: None,
                 kpt_sigmas=sigmas)
    # segtune's default for K != 17 is a uniform sigma; COCO's own 17 for K = 17 (both libraries' default).
    ref_sigmas = sigmas if sigmas is not None else (None if k == 17 else [UNIFORM_KEYPOINT_SIGMA] * k)
    ref = pycocotools_keypoint_stats(gt, results, ref_sigmas)
    capsys.readouterr()
    assert list(ours["keypoints"]) == list(KEYPOINT_STAT_NAMES)
    got = list(ours["keypoints"].values())
    assert got == pytest.approx(ref, abs=1e-6)
    assert 0.1 < got[0] < 0.95  # a real, imperfect score: the comparison is not degenerate
    assert got[1] >= got[0] >= 0


def test_sigmas_change_the_score():
    gt, results = synthetic(3)
    default = score(gt, results, ("keypoints",), print_fn=lambda _: None)["keypoints"]["AP"]
    strict = score(gt, results, ("keypoints",), print_fn=lambda _: None, kpt_sigmas=[0.01] * 3)["keypoints"]["AP"]
    assert strict < default


def test_perfect_keypoints_score_one():
    boxes = [[10, 20, 90, 150], [120, 30, 200, 180]]
    points = np.array([[[30, 40, 2], [50, 90, 1], [70, 140, 2]], [[150, 50, 2], [160, 100, 0], [190, 170, 2]]], float)
    items = [(1, "a.png", H, W, _target(boxes, points)), (2, "b.png", H, W, _target([], np.zeros((0, 3, 3))))]
    gt = ground_truth(items, ["person"], keypoint_names=["a", "b", "c"])
    output = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([1, 1]),
              "scores": torch.tensor([0.9, 0.8]), "keypoints": torch.tensor(points, dtype=torch.float32)}
    stats = score(gt, detections(1, output), ("bbox", "keypoints"), print_fn=lambda _: None)
    for iou_type in ("bbox", "keypoints"):
        assert stats[iou_type]["AP"] == pytest.approx(1.0)
    assert stats["keypoints"]["AR"] == pytest.approx(1.0)
    assert stats["keypoints"]["APm"] == pytest.approx(1.0)
    assert stats["keypoints"]["APl"] == -1.0  # both people are medium-sized: COCO's "none to measure"


def _key(image: torch.Tensor) -> str:
    return hashlib.sha1(image.numpy().tobytes()).hexdigest()


class KeypointOracle(nn.Module):
    """Returns each image's ground truth as detections with score 1, keypoints included (a perfect keypoint model)."""

    def __init__(self, dataset, *, keypoints: bool = True) -> None:
        super().__init__()
        self.keypoints = keypoints
        self.answers = {_key(image): target for image, target in (dataset[i] for i in range(len(dataset)))}

    def forward(self, images):
        outputs = []
        for image in images:
            target = self.answers[_key(image)]
            n = len(target["boxes"])
            out = {"boxes": target["boxes"].as_subclass(torch.Tensor).clone(), "labels": target["labels"].clone(),
                   "scores": torch.ones(n)}
            if self.keypoints:
                out["keypoints"] = target["keypoints"].clone()
                out["keypoints_scores"] = torch.ones(n, target["keypoints"].shape[1])
            outputs.append(out)
        return outputs


@pytest.fixture
def keypoint_dataset(tmp_path: Path):
    cfg = DataConfig(path=str(make_coco_keypoints(tmp_path / "data")))
    return build_dataset(cfg, train=False)


def test_evaluate_model_scores_keypoints(keypoint_dataset):
    gt = dataset_ground_truth(keypoint_dataset, ["person"])
    assert gt["categories"][0]["keypoints"] == KEYPOINT_NAMES and gt["categories"][0]["skeleton"] == SKELETON
    report = evaluate_model(KeypointOracle(keypoint_dataset), keypoint_dataset, ["person"], device=CPU)
    assert set(report.metrics) == {"bbox", "keypoints"}  # no masks predicted: no segm
    assert report.metrics["keypoints"]["AP"] == pytest.approx(1.0)
    assert primary_metric(report.metrics) == report.metrics["keypoints"]["AP"]
    # COCO's 12 bbox lines, then its 10 keypoint lines, each headed by the IoU metric line.
    assert report.summary[0] == "IoU metric: bbox" and report.summary[13] == "IoU metric: keypoints"
    assert len(report.summary) == 24
    shown = [float(re.search(r"=\s*(-?[0-9.]+)\s*$", line).group(1)) for line in report.summary[14:]]
    assert shown == pytest.approx(list(report.metrics["keypoints"].values()), abs=6e-4)


def test_box_only_model_on_keypoint_data_scores_bbox_only(keypoint_dataset):
    report = evaluate_model(KeypointOracle(keypoint_dataset, keypoints=False), keypoint_dataset, ["person"], device=CPU)
    assert set(report.metrics) == {"bbox"}
    assert primary_metric(report.metrics) == report.metrics["bbox"]["AP"] == pytest.approx(1.0)


def test_keypoints_without_ground_truth_keypoints_are_not_scored(keypoint_dataset, caplog):
    """A keypoint model evaluated on data without keypoints (e.g. --data of another data set): bbox only, a warning."""
    gt = dataset_ground_truth(keypoint_dataset, ["person"])
    for ann in gt["annotations"]:
        del ann["keypoints"], ann["num_keypoints"]
    for cat in gt["categories"]:
        del cat["keypoints"], cat["skeleton"]
    report = evaluate_model(KeypointOracle(keypoint_dataset), keypoint_dataset, ["person"], device=CPU, gt=gt)
    assert set(report.metrics) == {"bbox"}
    assert "keypoint AP not scored" in caplog.text
