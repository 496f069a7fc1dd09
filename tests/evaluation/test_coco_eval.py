"""COCO scoring: segtune's faster-coco-eval path against the reference pycocotools, and edge cases."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pycocotools import mask as pc_mask
from pycocotools.coco import COCO as PcCOCO
from pycocotools.cocoeval import COCOeval as PcCOCOeval

from segtune.errors import EvaluationError
from segtune.evaluation.coco_eval import (
    STAT_NAMES,
    detections,
    encode_masks,
    ground_truth,
    score,
    xyxy_to_xywh,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

CLASSES = ["cat", "dog"]
H, W = 120, 150


def box_mask(box: list[int], h: int = H, w: int = W) -> torch.Tensor:
    """A uint8 mask that fills the XYXY box exactly (x1, y1 exclusive)."""
    m = torch.zeros((h, w), dtype=torch.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1
    return m


def make_target(boxes: list[list[int]], labels: list[int], crowd: list[int] | None = None) -> dict:
    n = len(boxes)
    masks = torch.stack([box_mask(b) for b in boxes]) if n else torch.zeros((0, H, W), dtype=torch.uint8)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks,
        "area": masks.flatten(1).sum(1).to(torch.float32),
        "iscrowd": torch.tensor(crowd if crowd is not None else [0] * n, dtype=torch.int64),
    }


def random_box(rng: np.random.Generator, min_side: int = 4, max_side: int = 110) -> list[int]:
    bw, bh = int(rng.integers(min_side, max_side)), int(rng.integers(min_side, min(max_side, H - 1)))
    bw = min(bw, W - 1)
    x0, y0 = int(rng.integers(0, W - bw)), int(rng.integers(0, H - bh))
    return [x0, y0, x0 + bw, y0 + bh]


def make_output(boxes: list[list[int]], labels: list[int], scores: list[float], *, notch: bool = False) -> dict:
    """Model-like output; mask probabilities 0.9 inside each box, or, with ``notch``, the box less its left quarter
    (so that segm IoUs differ from bbox IoUs)."""
    n = len(boxes)
    masks = torch.zeros((n, 1, H, W))
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        cut = x0 + (x1 - x0) // 4 if notch else x0
        masks[k, 0, y0:y1, cut:x1] = 0.9
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "masks": masks,
    }


@pytest.fixture(scope="module")
def synthetic():
    """GT for 7 images (image 3 has no objects, one crowd region) and jittered detections with false positives."""
    rng = np.random.default_rng(1234)
    items, results = [], []
    for image_id in range(1, 8):
        if image_id == 3:
            target = make_target([], [])
        else:
            n = int(rng.integers(1, 6))
            boxes = [random_box(rng) for _ in range(n)]
            labels = [int(rng.integers(1, 3)) for _ in range(n)]
            crowd = [1 if (image_id == 5 and k == 0) else 0 for k in range(n)]
            target = make_target(boxes, labels, crowd)
        items.append((image_id, f"img{image_id}.png", H, W, target))

        det_boxes, det_labels = [], []
        for box, label in zip(target["boxes"].int().tolist(), target["labels"].tolist()):
            r_miss, r_flip = rng.random(2)
            if r_miss < 0.15:
                continue  # a missed object
            j = rng.integers(-4, 5, size=4)
            x0, y0 = max(0, box[0] + int(j[0])), max(0, box[1] + int(j[1]))
            x1, y1 = min(W, max(x0 + 2, box[2] + int(j[2]))), min(H, max(y0 + 2, box[3] + int(j[3])))
            det_boxes.append([x0, y0, x1, y1])
            # Now and then the right place with the wrong class.
            det_labels.append(label if r_flip > 0.1 else 3 - label)
        for _ in range(int(rng.integers(0, 4))):  # false positives
            det_boxes.append(random_box(rng))
            det_labels.append(int(rng.integers(1, 3)))
        scores = rng.random(len(det_boxes)).tolist()
        results.extend(detections(image_id, make_output(det_boxes, det_labels, scores, notch=image_id % 2 == 0)))
    gt = ground_truth(items, CLASSES)
    return gt, results


def pycocotools_stats(gt: dict, results: list[dict], iou_type: str) -> list[float]:
    coco_gt = PcCOCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(copy.deepcopy(results))
    ev = PcCOCOeval(coco_gt, coco_dt, iouType=iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(v) for v in ev.stats[:12]]


def test_synthetic_data_is_meaningful(synthetic):
    gt, results = synthetic
    assert {a["category_id"] for a in gt["annotations"]} == {1, 2}
    assert any(a["iscrowd"] == 1 for a in gt["annotations"])
    assert 3 not in {a["image_id"] for a in gt["annotations"]}
    assert len(results) > len(gt["annotations"]) // 2
    assert all("segmentation" in r and "bbox" in r for r in results)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matches_pycocotools(synthetic, iou_type, capsys):
    gt, results = synthetic
    ours = score(copy.deepcopy(gt), copy.deepcopy(results), (iou_type,), print_fn=lambda _: None)
    ref = pycocotools_stats(gt, results, iou_type)
    capsys.readouterr()
    got = [ours[iou_type][name] for name in STAT_NAMES]
    assert got == pytest.approx(ref, abs=1e-6)
    # Not a degenerate comparison: a real, imperfect score in (0, 1).
    assert 0.2 < got[0] < 0.95
    assert all(v >= 0 for v in got)  # small, medium and large objects all present
    assert got[1] >= got[0] and got[1] >= got[2]


def test_score_reuses_ground_truth_and_keeps_results(synthetic):
    """The trainer passes the same ``gt`` dict every epoch: a second scoring must give the same numbers."""
    gt, results = synthetic
    gt_reused, results_copy = copy.deepcopy(gt), copy.deepcopy(results)
    first = score(gt_reused, results_copy, print_fn=lambda _: None)
    assert results_copy == results  # loadRes works on copies
    second = score(gt_reused, results_copy, print_fn=lambda _: None)
    fresh = score(copy.deepcopy(gt), copy.deepcopy(results), print_fn=lambda _: None)
    assert first == second == fresh
    assert first["bbox"] != first["segm"]  # the notched masks make segm IoUs differ
    # A different set of detections on the reused gt is scored on its own merits.
    fewer = [r for r in results if r["score"] > 0.5]
    assert score(gt_reused, fewer, print_fn=lambda _: None) == score(copy.deepcopy(gt), fewer, print_fn=lambda _: None)


def test_perfect_detections_score_one():
    targets = [make_target([[5, 5, 60, 70], [70, 20, 140, 110]], [1, 2]), make_target([], [])]
    items = [(i + 1, f"{i}.png", H, W, t) for i, t in enumerate(targets)]
    gt = ground_truth(items, CLASSES)
    results = detections(1, make_output([[5, 5, 60, 70], [70, 20, 140, 110]], [1, 2], [0.9, 0.8]))
    stats = score(gt, results, print_fn=lambda _: None)
    for iou_type in ("bbox", "segm"):
        assert stats[iou_type]["AP"] == pytest.approx(1.0)
        assert stats[iou_type]["AR100"] == pytest.approx(1.0)
        assert stats[iou_type]["APs"] == -1.0  # both objects are large-ish: no small ones


def test_zero_predictions_score_zero_where_gt_exists():
    items = [(1, "a.png", H, W, make_target([[5, 5, 60, 70]], [1])), (2, "b.png", H, W, make_target([], []))]
    stats = score(ground_truth(items, CLASSES), [], print_fn=lambda _: None)
    assert set(stats) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert list(stats[iou_type]) == list(STAT_NAMES)
        assert stats[iou_type]["AP"] == 0.0
        assert stats[iou_type]["AP50"] == 0.0
        assert stats[iou_type]["AR100"] == 0.0


@pytest.mark.parametrize("with_predictions", [False, True])
def test_all_negative_images(with_predictions):
    items = [(i, f"{i}.png", H, W, make_target([], [])) for i in (1, 2)]
    gt = ground_truth(items, CLASSES)
    assert gt["annotations"] == [] and len(gt["images"]) == 2
    results = detections(2, make_output([[5, 5, 60, 70]], [1], [0.7])) if with_predictions else []
    stats = score(gt, results, print_fn=lambda _: None)
    for iou_type in ("bbox", "segm"):
        assert stats[iou_type]["AP"] == -1.0
        assert stats[iou_type]["AR100"] == -1.0


def test_bbox_only_iou_type():
    items = [(1, "a.png", H, W, make_target([[5, 5, 60, 70]], [2]))]
    out = make_output([[5, 5, 60, 70]], [2], [0.5])
    del out["masks"]
    results = detections(1, out)
    assert "segmentation" not in results[0]
    stats = score(ground_truth(items, CLASSES), results, ("bbox",), print_fn=lambda _: None)
    assert list(stats) == ["bbox"]
    assert stats["bbox"]["AP"] == pytest.approx(1.0)


def test_ground_truth_json():
    target = make_target([[5, 6, 25, 36], [0, 0, 10, 10]], [2, 1], crowd=[0, 1])
    gt = ground_truth([(7, "x.png", H, W, target), (9, "y.png", 40, 50, make_target([], []))], CLASSES)
    assert gt["images"] == [
        {"id": 7, "file_name": "x.png", "height": H, "width": W},
        {"id": 9, "file_name": "y.png", "height": 40, "width": 50},
    ]
    assert gt["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    a, b = gt["annotations"]
    assert (a["id"], a["image_id"], a["category_id"], a["iscrowd"]) == (1, 7, 2, 0)
    assert a["bbox"] == [5.0, 6.0, 20.0, 30.0]
    assert a["area"] == 600.0
    assert (b["id"], b["category_id"], b["iscrowd"], b["area"]) == (2, 1, 1, 100.0)
    assert pc_mask.decode(a["segmentation"]).sum() == 600


def test_detections_thresholds_masks():
    probs = torch.zeros((1, 1, 8, 10))
    probs[0, 0, 2:4, 3:8] = 0.6
    probs[0, 0, 5, 5] = 0.4
    out = {"boxes": torch.tensor([[3.0, 2.0, 8.0, 4.0]]), "scores": torch.tensor([0.25]),
           "labels": torch.tensor([2]), "masks": probs}
    (entry,) = detections(4, out)
    assert entry["image_id"] == 4 and entry["category_id"] == 2
    assert entry["score"] == pytest.approx(0.25)
    assert entry["bbox"] == [3.0, 2.0, 5.0, 2.0]
    assert pc_mask.decode(entry["segmentation"]).sum() == 10
    (low,) = detections(4, out, mask_threshold=0.3)
    assert pc_mask.decode(low["segmentation"]).sum() == 11
    assert detections(4, {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0)}) == []


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool])
def test_encode_masks_round_trip(dtype):
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((3, 17, 23)) > 0.5).to(dtype)
    masks[1] = 0  # an empty mask
    rles = encode_masks(masks)
    assert len(rles) == 3
    for rle, m in zip(rles, masks):
        assert isinstance(rle["counts"], str)
        assert rle["size"] == [17, 23]
        decoded = pc_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
        np.testing.assert_array_equal(decoded, m.to(torch.uint8).numpy())
    assert encode_masks(torch.zeros((0, 5, 5), dtype=dtype)) == []


def test_xyxy_to_xywh():
    boxes = torch.tensor([[1.0, 2.0, 11.0, 22.5], [0.0, 0.0, 0.5, 3.0]])
    assert xyxy_to_xywh(boxes) == [[1.0, 2.0, 10.0, 20.5], [0.0, 0.0, 0.5, 3.0]]
    assert xyxy_to_xywh(torch.tensor([[1, 2, 4, 8]], dtype=torch.int64)) == [[1.0, 2.0, 3.0, 6.0]]
    assert xyxy_to_xywh(torch.zeros((0, 4))) == []


def test_printed_summary():
    items = [(1, "a.png", H, W, make_target([[5, 5, 60, 70]], [1]))]
    results = detections(1, make_output([[5, 5, 60, 70]], [1], [0.5]))
    lines: list[str] = []
    score(ground_truth(items, CLASSES), results, print_fn=lines.append)
    assert "IoU metric: bbox" in lines and "IoU metric: segm" in lines
    assert lines.index("IoU metric: bbox") < lines.index("IoU metric: segm")
    ap_lines = [line for line in lines if line.startswith(" Average Precision")]
    assert len(ap_lines) == 12  # 6 AP lines per IoU type
    assert ap_lines[0].rstrip().endswith("= 1.000")


def test_per_class_ap_averages_to_the_summary_ap() -> None:
    """Two classes: class 'a' found exactly, class 'b' missed; per-class AP 1 and 0, summary AP 0.5."""
    from segtune.evaluation.coco_eval import score

    gt = {"images": [{"id": 1, "width": 20, "height": 20, "file_name": "x.png"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 2, "bbox": [10, 10, 6, 6], "area": 36, "iscrowd": 0}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    per_class: dict = {}
    metrics = score(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8], "score": 0.9}], ("bbox",),
                    print_fn=lambda line: None, per_class=per_class)
    assert per_class == {"bbox": {"a": 1.0, "b": 0.0}}
    assert metrics["bbox"]["AP"] == pytest.approx(0.5)


def test_labels_and_category_ids_are_kept_apart() -> None:
    """A data set with COCO ids 5 and 9: the ground truth and the results carry the ids, models' labels are mapped."""
    target = make_target([[10, 10, 60, 50], [70, 20, 120, 90]], [1, 2])
    gt = ground_truth([(1, "a.png", H, W, target)], CLASSES, category_ids=[5, 9])
    assert [c["id"] for c in gt["categories"]] == [5, 9]
    assert [a["category_id"] for a in gt["annotations"]] == [5, 9]
    output = make_output([[10, 10, 60, 50], [70, 20, 120, 90]], [1, 2], [0.9, 0.8])
    results = detections(1, output, category_ids=[5, 9])
    assert [r["category_id"] for r in results] == [5, 9]
    assert score(gt, results, ("bbox",), print_fn=lambda line: None)["bbox"]["AP"] == pytest.approx(1.0)

    # results left in label space (1, 2) match no category: a clear error, not AP 0
    with pytest.raises(EvaluationError, match=r"category id\(s\) in the results are not in the ground truth: 1, 2"
                                              r".*its category ids: 5, 9.*detections\(\.\.\., category_ids=\.\.\.\)"):
        score(gt, detections(1, output), ("bbox",))
    with pytest.raises(EvaluationError, match=r"image id\(s\) in the results are not in the ground truth: 7"):
        score(gt, detections(7, output, category_ids=[5, 9]), ("bbox",))
    with pytest.raises(EvaluationError, match=r"label 3 is outside the 2 classes"):
        detections(1, make_output([[1, 1, 9, 9]], [3], [0.5]), category_ids=[5, 9])
    with pytest.raises(EvaluationError, match="must name each of the 2 classes once"):
        ground_truth([], CLASSES, category_ids=[5, 5])
