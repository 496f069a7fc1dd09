"""Report analysis: PR curves, best-F1 threshold, confusion matrix, per-image results and error analysis on hand-made cases."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.core import mask as mask_utils

from segtune.evaluation.analysis import STAGES, analyse
from segtune.evaluation.coco_eval import score

H, W = 100, 120


def make_gt(objects: list[tuple[int, int, list[int]] | tuple[int, int, list[int], int]], *, images: int,
            categories: list[tuple[str, str | None]], masks: bool = False) -> dict:
    """COCO ground truth from ``(image_id, category_id, [x, y, w, h], iscrowd=0)``; images 1..``images``."""
    cats = []
    for i, (name, sup) in enumerate(categories, start=1):
        cats.append({"id": i, "name": name} | ({"supercategory": sup} if sup else {}))
    anns = []
    for obj in objects:
        image_id, cat, box = obj[:3]
        ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": [float(v) for v in box],
               "area": float(box[2] * box[3]), "iscrowd": obj[3] if len(obj) > 3 else 0}
        if masks:
            ann["segmentation"] = rle(box)
        anns.append(ann)
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in range(1, images + 1)],
            "annotations": anns, "categories": cats}


def det(image_id: int, cat: int, box: list[int], score_: float, *, masks: bool = False) -> dict:
    out = {"image_id": image_id, "category_id": cat, "bbox": [float(v) for v in box], "score": score_}
    if masks:
        out["segmentation"] = rle(box, notch=True)
    return out


def rle(box: list[int], *, notch: bool = False) -> dict:
    """The RLE of a box-shaped mask; with ``notch``, less an eighth at its top left (segm IoUs then differ from bbox ones)."""
    m = np.zeros((H, W), dtype=np.uint8)
    x, y, w, h = box
    m[y:y + h, x:x + w] = 1
    if notch:
        m[y:y + h // 4, x:x + w // 2] = 0
    out = mask_utils.encode(np.asfortranarray(m[:, :, None]))[0]
    out["counts"] = out["counts"].decode("ascii")
    return out


TWO = [("cat", "animal"), ("dog", "animal")]


def jittered_case(masks: bool = False) -> tuple[dict, list[dict]]:
    """Six images of cats and dogs, detections jittered, some confused, some spurious, one crowd region."""
    rng = np.random.default_rng(3)
    objects, results = [], []
    for image_id in range(1, 7):
        for _ in range(3):
            w, h = (int(v) for v in rng.integers(12, 40, 2))
            x, y = int(rng.integers(0, W - w - 8)), int(rng.integers(0, H - h - 8))
            cat = int(rng.integers(1, 3))
            objects.append((image_id, cat, [x, y, w, h]))
            for _ in range(int(rng.integers(0, 3))):
                dx, dy = (int(v) for v in rng.integers(0, 8, 2))
                label = cat if rng.random() < 0.8 else 3 - cat
                results.append(det(image_id, label, [x + dx, y + dy, w, h], float(rng.random()), masks=masks))
        results.append(det(image_id, 1, [0, 0, 10, 10], float(rng.random()), masks=masks))
    objects.append((6, 1, [70, 60, 40, 30], 1))
    return make_gt(objects, images=6, categories=TWO, masks=masks), results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_pr_curves_match_coco(iou_type: str) -> None:
    gt, results = jittered_case(masks=iou_type == "segm")
    analysis = analyse(gt, results, iou_type)
    stats = score(gt, results, (iou_type,), print_fn=lambda _: None)[iou_type]
    curves = {(c.name, c.iou): c for c in analysis.pr}
    assert curves["all", 0.5].ap == pytest.approx(stats["AP50"], abs=1e-9)
    assert curves["all", 0.75].ap == pytest.approx(stats["AP75"], abs=1e-9)
    assert 0 < stats["AP75"] < stats["AP50"] < 1

    coco_gt = COCO(copy.deepcopy(gt))
    evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType=iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"]  # [IoU .5:.95, recall, class, area, max dets]
    for k, name in enumerate(["cat", "dog"]):
        for t, iou in ((0, 0.5), (5, 0.75)):
            row = precision[t, :, k, 0, -1]
            curve = curves[name, iou]
            assert curve.ap == pytest.approx(float(row.mean()), abs=1e-12)
            assert curve.precision[0] == pytest.approx(row[0]) and curve.precision[-1] == pytest.approx(row[-1])
            assert curve.recall[0] == 0.0 and curve.recall[-1] == 1.0 and len(curve.recall) == 101


def test_confusion_matrix_counts() -> None:
    gt = make_gt([
        (1, 1, [0, 0, 20, 20]),  # cat, found
        (1, 2, [40, 0, 20, 20]),  # dog, called a cat
        (1, 1, [0, 40, 20, 20]),  # cat, only a low-scoring detection: missed
        (1, 1, [60, 50, 40, 40], 1),  # crowd cats: never counted
        (2, 2, [10, 10, 30, 30]),  # dog, missed
        (2, 2, [50, 50, 30, 30]),  # dog, found
    ], images=2, categories=TWO)
    results = [
        det(1, 1, [0, 0, 20, 20], 0.9),
        det(1, 1, [40, 0, 20, 20], 0.8),
        det(1, 2, [100, 0, 15, 15], 0.7),  # a spurious dog
        det(1, 1, [65, 55, 20, 20], 0.9),  # inside the crowd region: ignored
        det(1, 1, [0, 40, 20, 20], 0.2),  # below the threshold
        det(2, 2, [50, 50, 30, 30], 0.95),
        det(2, 1, [0, 80, 10, 10], 0.6),  # a spurious cat
    ]
    confusion = analyse(gt, results, score_threshold=0.5, error_analysis=False).confusion
    assert confusion.classes == ["cat", "dog"] and confusion.score_threshold == 0.5 and confusion.iou == 0.5
    #                   pred cat, dog, background
    assert confusion.counts == [[1, 0, 1],  # gt cat
                                [1, 1, 1],  # gt dog
                                [1, 1, 0]]  # background
    assert confusion.normalised()[0] == pytest.approx([0.5, 0.0, 0.5])
    assert confusion.normalised()[2] == pytest.approx([0.5, 0.5, 0.0])
    low = analyse(gt, results, score_threshold=0.1, error_analysis=False).confusion
    assert low.counts[0] == [2, 0, 0]


def test_best_f1_threshold_by_construction() -> None:
    gt = make_gt([(1, 1, [0, 0, 20, 20]), (1, 1, [40, 40, 20, 20]), (2, 1, [0, 0, 30, 30]),
                  (2, 1, [50, 50, 30, 30])], images=2, categories=[("cat", None)])
    results = [det(1, 1, [0, 0, 20, 20], 0.9), det(1, 1, [40, 40, 20, 20], 0.8), det(1, 1, [90, 0, 20, 20], 0.7),
               det(2, 1, [0, 0, 30, 30], 0.6), det(2, 1, [90, 70, 20, 20], 0.3)]
    # t=.9: P 1, R 1/4, F1 .4; t=.8: 1, 1/2, 2/3; t=.7: 2/3, 1/2, 4/7; t=.6: 3/4, 3/4, 3/4; t=.3: 3/5, 3/4, 2/3.
    curve = analyse(gt, results, error_analysis=False).thresholds
    assert curve.best_threshold == 0.6
    assert (curve.best_f1, curve.best_precision, curve.best_recall) == pytest.approx((0.75, 0.75, 0.75))
    assert curve.thresholds == sorted(curve.thresholds) and 0.6 in curve.thresholds
    at = {round(t, 6): i for i, t in enumerate(curve.thresholds)}
    assert curve.f1[at[0.85]] == pytest.approx(0.4) and curve.precision[at[0.0]] == pytest.approx(0.6)
    assert curve.recall[at[0.65]] == pytest.approx(0.5) and curve.f1[at[0.95]] == 0.0


def test_per_image_results_and_worst_image() -> None:
    gt = make_gt([
        (1, 1, [0, 0, 20, 20]), (1, 1, [40, 40, 30, 30]),  # one found, the larger missed
        (2, 1, [0, 0, 10, 10]), (2, 2, [50, 0, 40, 40]), (2, 1, [0, 50, 20, 20]),  # all missed
        (3, 2, [10, 10, 30, 30]),  # found
    ], images=5, categories=TWO)
    results = [
        det(1, 1, [0, 0, 20, 20], 0.9), det(1, 1, [90, 80, 10, 10], 0.6), det(1, 1, [100, 0, 10, 10], 0.7),
        det(2, 1, [50, 0, 40, 40], 0.8),  # dog called a cat: an FP and a miss
        det(3, 2, [10, 10, 30, 30], 0.9), det(3, 2, [80, 60, 10, 10], 0.1),  # the second below the threshold
        det(5, 1, [0, 0, 10, 10], 0.95),  # image 5 has nothing to find; image 4 has nothing at all
    ]
    images = analyse(gt, results, score_threshold=0.5, error_analysis=False).images
    assert [i.image_id for i in images] == [1, 2, 3, 4, 5]
    got = {i.image_id: (i.tp, i.fp, i.fn) for i in images}
    assert got == {1: (1, 2, 1), 2: (0, 1, 3), 3: (1, 0, 0), 4: (0, 0, 0), 5: (0, 1, 0)}
    first, second, third, fourth, fifth = images
    assert first.f1 == pytest.approx(2 / 5) and first.false_positives == [2, 1] and first.misses == [2]
    assert second.misses == [4, 5, 3] and second.false_positives == [3] and second.f1 == 0.0
    assert third.f1 == 1.0 and fourth.f1 == 1.0 and fifth.f1 == 0.0 and fifth.false_positives == [6]
    worst = min(images, key=lambda i: (i.f1, -(i.fp + i.fn)))
    assert worst.image_id == 2


def error_case(supercategories: bool = True) -> tuple[dict, list[dict]]:
    """One cat, dog and car; the cat's detections, best first: on the dog, on the car, then a poor box on the cat."""
    cats = [("cat", "animal"), ("dog", "animal"), ("car", "vehicle")]
    if not supercategories:
        cats = [(name, None) for name, _ in cats]
    gt = make_gt([(1, 1, [0, 0, 40, 40]), (2, 2, [0, 0, 40, 40]), (3, 3, [0, 0, 40, 40])], images=3,
                 categories=cats)
    results = [
        det(2, 1, [0, 0, 40, 40], 0.9),  # cat on the dog: similar-class confusion
        det(3, 1, [0, 0, 40, 40], 0.8),  # cat on the car: other-class confusion
        det(1, 1, [20, 0, 40, 40], 0.7),  # the cat, IoU 1/3: localisation error
        det(2, 2, [0, 0, 40, 26], 0.95),  # the dog, IoU .65: right at .5, wrong at .75
        det(3, 3, [0, 0, 40, 40], 0.95),  # the car, exactly
    ]
    return gt, results


def test_error_analysis_stages() -> None:
    gt, results = error_case()
    errors = analyse(gt, results).errors
    assert errors is not None and errors.stages == list(STAGES)
    cat, dog, car = (errors.ap["all"][name] for name in ("cat", "dog", "car"))
    # cat: C50 finds nothing; at IoU .1 one TP after two FPs (1/3); forgiving the dog leaves one FP (1/2);
    # forgiving all classes leaves none.
    assert [cat[s] for s in STAGES] == pytest.approx([0, 0, 1 / 3, 1 / 2, 1, 1, 1])
    assert [dog[s] for s in STAGES] == pytest.approx([0, 1, 1, 1, 1, 1, 1])
    assert [car[s] for s in STAGES] == pytest.approx([1] * 7)
    everything = errors.ap["all"]["all"]
    assert [everything[s] for s in STAGES] == pytest.approx([1 / 3, 2 / 3, 7 / 9, 5 / 6, 1, 1, 1])
    assert errors.ap["medium"]["all"] == pytest.approx(everything)  # 40 x 40 boxes are all medium
    assert errors.ap["small"]["cat"]["C50"] == -1 and errors.ap["large"]["all"]["FN"] == -1
    assert set(errors.curves) == set(STAGES) and errors.curves["FN"] == [[1.0] * 101]
    assert np.mean(errors.curves["Sim"][0]) == pytest.approx(5 / 6) and len(errors.recall) == 101

    flat = analyse(*error_case(supercategories=False)).errors
    assert flat is not None
    assert flat.ap["all"]["cat"]["Sim"] == pytest.approx(flat.ap["all"]["cat"]["Loc"]) == pytest.approx(1 / 3)
    assert flat.ap["all"]["cat"]["Oth"] == pytest.approx(1)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_empty_results(iou_type: str) -> None:
    gt = make_gt([(1, 1, [0, 0, 20, 20]), (1, 1, [30, 30, 20, 20], 1)], images=2, categories=TWO,
                 masks=iou_type == "segm")
    analysis = analyse(gt, [], iou_type)
    aps = {(c.name, c.iou): c.ap for c in analysis.pr}
    assert aps["cat", 0.5] == 0.0 and aps["dog", 0.5] == -1.0 and aps["all", 0.75] == 0.0
    assert analysis.thresholds.best_f1 == 0.0 and analysis.thresholds.best_threshold == 0.0
    assert analysis.confusion.counts == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert [(i.tp, i.fp, i.fn, i.f1) for i in analysis.images] == [(0, 0, 1, 0.0), (0, 0, 0, 1.0)]
    assert analysis.errors is not None and analysis.errors.ap["all"]["all"]["C50"] == 0.0
    assert analysis.errors.ap["all"]["all"]["FN"] == 1.0 and analysis.errors.ap["all"]["dog"]["FN"] == -1.0
    json.dumps(dataclasses.asdict(analysis))

    nothing = analyse(make_gt([], images=2, categories=TWO), [], iou_type)
    assert all(c.ap == -1.0 for c in nothing.pr) and [i.f1 for i in nothing.images] == [1.0, 1.0]
    assert nothing.errors is not None and nothing.errors.ap["all"]["all"]["C75"] == -1.0
    spurious = analyse(make_gt([], images=1, categories=TWO), [det(1, 2, [0, 0, 9, 9], 0.5, masks=True)], iou_type)
    assert spurious.confusion.counts[2] == [0, 1, 0] and spurious.images[0].fp == 1


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_inputs_not_mutated(iou_type: str) -> None:
    gt, results = jittered_case(masks=True)
    before = copy.deepcopy((gt, results))
    analysis = analyse(gt, results, iou_type)
    assert (gt, results) == before
    json.dumps(dataclasses.asdict(analysis))
