"""Owns the numbers behind a run report: precision-recall curves, the score threshold with the best F1,
a confusion matrix, per-image results and COCO error analysis, for ``bbox`` or ``segm``.

Inputs are a COCO ground-truth dict (as :func:`segtune.evaluation.coco_eval.ground_truth` makes:
categories in label order, a class's name is its category's name) and a COCO results list (as
:func:`segtune.evaluation.coco_eval.detections` makes). Neither is changed: faster-coco-eval edits the
dicts it is given, so it only ever sees copies.

All matching is faster-coco-eval's own (``COCOeval_faster``; ``ExtraEval`` / ``PreviewResults`` with
``extra_calc`` mark which detection matched which ground truth); this module only counts and arranges
what it reports. The outputs are dataclasses of plain lists and floats, ready for
``json.dumps(dataclasses.asdict(...))``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.extra import PreviewResults
from faster_coco_eval.extra.extra import ExtraEval

from segtune.errors import EvaluationError
from segtune.evaluation.coco_eval import check_results

logger = logging.getLogger(__name__)

#: The error-analysis stages, in the order each one forgives one more kind of error.
STAGES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
#: COCO's area ranges, in the order its evaluator reports them.
AREAS = ("all", "small", "medium", "large")
#: COCO's 101 recall points.
RECALL = np.linspace(0.0, 1.0, 101)
_GRID = np.linspace(0.0, 1.0, 101)


@dataclass
class PRCurve:
    """One precision-recall curve, a row of COCOeval's accumulated precision (area all, 100 detections).

    ``name`` is a class or ``"all"`` (the mean, per recall point, over the classes that have ground
    truth); ``ap`` is the mean of ``precision``, i.e. COCO's AP at ``iou`` for it. A class without
    ground truth has ``ap`` -1 and ``precision`` all -1 (COCO's "undefined").
    """

    name: str
    iou: float
    recall: list[float]
    precision: list[float]
    ap: float


@dataclass
class ThresholdCurve:
    """Precision, recall and F1 of the detections scoring >= t, all classes pooled (micro-averaged).

    Matching is COCO's at IoU 0.5 (class-aware, greedy by score; a detection matched to a crowd region
    counts as neither TP nor FP, crowd regions are not objects to find). ``thresholds`` are the 101
    points 0, 0.01, ..., 1 plus ``best_threshold``, ascending. ``best_*`` are exact: F1 only changes at
    a detection's score, so the best is searched over all distinct scores (ties: the highest threshold).
    With nothing detected or nothing to find the ratios are 0.
    """

    thresholds: list[float]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    best_threshold: float
    best_f1: float
    best_precision: float
    best_recall: float


@dataclass
class ConfusionMatrix:
    """Class-agnostic matching at ``iou`` of the detections scoring >= ``score_threshold``.

    ``counts[g][p]``: rows are ground-truth classes, columns predicted ones; index ``len(classes)`` is
    background (last row: spurious detections, last column: missed objects). Crowd regions are never
    counted, nor are detections that matched one.
    """

    classes: list[str]
    counts: list[list[int]]
    iou: float
    score_threshold: float

    def normalised(self) -> list[list[float]]:
        """Each row divided by its sum (a row of zeros where the sum is 0)."""
        counts = np.asarray(self.counts, dtype=np.float64)
        sums = counts.sum(axis=1, keepdims=True)
        return np.divide(counts, sums, out=np.zeros_like(counts), where=sums > 0).tolist()


@dataclass
class ImageResult:
    """One image at IoU 0.5 and the report's score threshold, class-aware.

    ``f1`` is 2tp / (2tp + fp + fn), 1.0 for an image with nothing to find and nothing found.
    ``false_positives`` are indices into the results list, highest score first; ``misses`` are
    ground-truth annotation ids (crowd regions excluded), largest area first.
    """

    image_id: int
    tp: int
    fp: int
    fn: int
    f1: float
    false_positives: list[int]
    misses: list[int]


@dataclass
class ErrorAnalysis:
    """COCO error analysis (Hoiem et al.; pycocotools' ``analyze()``): AP as each kind of error is forgiven.

    Stages: C75 / C50 (AP at IoU 0.75 / 0.5), Loc (IoU 0.1: poor localisation forgiven), Sim (also
    confusion with classes of the same supercategory), Oth (all class confusion), BG (also background
    false positives: precision 1 wherever Oth's is > 0), FN (also misses: precision 1). Categories
    without ``supercategory`` are each their own, and then Sim equals Loc.

    ``ap[area][name][stage]`` for the areas of :data:`AREAS` and each class or ``"all"`` (the mean over
    the classes with ground truth in that area); -1 where there is no ground truth (pycocotools counts
    such classes as 0 instead). ``curves[stage]`` is the precision over ``recall`` (COCO's 101 points)
    for area all and ``"all"``, for a stacked plot.
    """

    stages: list[str]
    ap: dict[str, dict[str, dict[str, float]]]
    curves: dict[str, list[list[float]]]
    recall: list[float]


@dataclass
class Analysis:
    """Everything :func:`analyse` computes for one IoU type."""

    iou_type: str
    classes: list[str]
    pr: list[PRCurve]
    thresholds: ThresholdCurve
    confusion: ConfusionMatrix
    images: list[ImageResult]
    errors: ErrorAnalysis | None


def analyse(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    iou_type: str = "bbox",
    *,
    score_threshold: float | None = None,
    error_analysis: bool = True,
) -> Analysis:
    """The report numbers for ``results`` against ``gt`` (see the module docstring) for ``iou_type``.

    Args:
        score_threshold: the score from which a detection counts for the confusion matrix and the
            per-image results; default the threshold with the best F1 (:class:`ThresholdCurve`).
        error_analysis: whether to compute :class:`ErrorAnalysis` (two more COCO evaluations).

    Raises:
        EvaluationError: an unsupported ``iou_type``, or results naming categories or images ``gt`` lacks.
    """
    if iou_type not in ("bbox", "segm"):
        raise EvaluationError(f"analyse() supports iou_type 'bbox' and 'segm', not {iou_type!r}")
    check_results(gt, results)
    gt = copy.deepcopy(gt)
    results = copy.deepcopy(results)  # each loadRes below gets shallow copies of these private dicts
    classes = [str(c["name"]) for c in gt["categories"]]
    cat_ids = [int(c["id"]) for c in gt["categories"]]
    coco_gt = COCO(gt)

    # One COCO evaluation serves the PR curves (IoU .5, .75) and error analysis' C75, C50, Loc (IoU .1).
    main = _evaluate(coco_gt, _load(coco_gt, results), iou_type, [0.1, 0.5, 0.75])
    precision = _by_label(main, cat_ids)  # [IoU, recall, class (label order), area]
    pr = [curve for t, iou in ((1, 0.5), (2, 0.75)) for curve in _pr_curves(precision[t, :, :, 0], classes, iou)]

    # Class-aware matching at IoU .5 of every detection (ExtraEval lifts COCO's 100-per-image cap).
    matching = ExtraEval(coco_gt, _load(coco_gt, results), iouType=iou_type, iou_tresh=0.5, useCats=True)
    scores = np.array([float(r["score"]) for r in results], dtype=np.float64)
    det_gt = _matched_gt(matching.cocoDt, len(results))
    crowd = {int(a["id"]) for a in gt["annotations"] if a.get("iscrowd", 0)}
    is_tp = (det_gt > 0) & ~np.isin(det_gt, list(crowd))
    is_fp = det_gt == 0  # the rest matched a crowd region: COCO ignores them
    n_gt = len(gt["annotations"]) - len(crowd)
    thresholds = _threshold_curve(scores, is_tp, is_fp, n_gt)

    threshold = thresholds.best_threshold if score_threshold is None else float(score_threshold)
    confusion = _confusion(coco_gt, _load(coco_gt, results), iou_type, threshold, classes, cat_ids)
    images = _images(gt, results, scores, is_tp, is_fp, matching.cocoGt, threshold)
    errors = _errors(coco_gt, results, iou_type, precision, classes, cat_ids) if error_analysis else None
    return Analysis(iou_type=iou_type, classes=classes, pr=pr, thresholds=thresholds, confusion=confusion,
                    images=images, errors=errors)


def _load(coco_gt: COCO, results: list[dict[str, Any]]) -> COCO:
    """A results COCO for ``coco_gt``; loadRes adds ids (index + 1), areas and flags to the dicts it gets."""
    return coco_gt.loadRes([dict(r) for r in results])


def _evaluate(coco_gt: COCO, coco_dt: COCO, iou_type: str, iou_thrs: list[float]) -> COCOeval_faster:
    """COCOeval at ``iou_thrs``, COCO's four area ranges and 100 detections per image and class."""
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=logger.debug)
    evaluator.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
    evaluator.params.maxDets = [100]
    evaluator.evaluate()
    evaluator.accumulate()
    return evaluator


def _by_label(evaluator: COCOeval_faster, cat_ids: list[int]) -> np.ndarray:
    """``eval["precision"]`` [T, R, K, A, M] as [T, R, K, A] with K in label order (COCO sorts by id)."""
    order = [int(c) for c in evaluator.params.catIds]
    return np.take(evaluator.eval["precision"][..., -1], [order.index(c) for c in cat_ids], axis=2)


def _mean_curve(rows: np.ndarray) -> np.ndarray:
    """Per recall point, the mean of the rows of ``rows`` [R, K] that are defined (-1 where none is)."""
    valid = (rows > -1).all(axis=0)
    return rows[:, valid].mean(axis=1) if valid.any() else np.full(rows.shape[0], -1.0)


def _ap(row: np.ndarray) -> float:
    return float(row.mean()) if (row > -1).all() else -1.0


def _pr_curves(rows: np.ndarray, classes: list[str], iou: float) -> list[PRCurve]:
    """PR curves of each class and ``"all"`` from ``rows`` [R, K] (one IoU, area all)."""
    named = [(name, rows[:, k]) for k, name in enumerate(classes)] + [("all", _mean_curve(rows))]
    return [PRCurve(name=name, iou=iou, recall=RECALL.tolist(), precision=row.tolist(), ap=_ap(row))
            for name, row in named]


def _matched_gt(coco_dt: COCO, n: int) -> np.ndarray:
    """For each result (by index), the id of the ground truth that extra_calc matched it to, else 0."""
    out = np.zeros(n, dtype=np.int64)
    for ann_id, ann in coco_dt.anns.items():
        if ann.get("gt_id") is not None:
            out[int(ann_id) - 1] = int(ann["gt_id"])
    return out


def _counts_at(scores: np.ndarray, is_tp: np.ndarray, is_fp: np.ndarray,
               thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP counts among the detections scoring >= each of ``thresholds``."""
    order = np.argsort(scores, kind="stable")
    ascending = scores[order]
    tp_above = np.concatenate([np.cumsum(is_tp[order][::-1])[::-1], [0]])  # [i]: among order[i:]
    fp_above = np.concatenate([np.cumsum(is_fp[order][::-1])[::-1], [0]])
    first = np.searchsorted(ascending, thresholds, side="left")
    return tp_above[first], fp_above[first]


def _ratios(tp: np.ndarray, fp: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 (0 where undefined)."""
    tp, fp = tp.astype(np.float64), fp.astype(np.float64)
    fn = n_gt - tp
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    recall = tp / n_gt if n_gt else np.zeros_like(tp)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0)
    return precision, recall, f1


def _threshold_curve(scores: np.ndarray, is_tp: np.ndarray, is_fp: np.ndarray, n_gt: int) -> ThresholdCurve:
    candidates = np.unique(scores)[::-1]  # descending, so argmax picks the highest of tied thresholds
    best_threshold, best = 0.0, (0.0, 0.0, 0.0)
    if candidates.size:
        p, r, f = _ratios(*_counts_at(scores, is_tp, is_fp, candidates), n_gt)
        i = int(np.argmax(f))
        best_threshold, best = float(candidates[i]), (float(p[i]), float(r[i]), float(f[i]))
    grid = np.unique(np.append(_GRID, best_threshold))
    precision, recall, f1 = _ratios(*_counts_at(scores, is_tp, is_fp, grid), n_gt)
    return ThresholdCurve(thresholds=grid.tolist(), precision=precision.tolist(), recall=recall.tolist(),
                          f1=f1.tolist(), best_threshold=best_threshold, best_f1=best[2],
                          best_precision=best[0], best_recall=best[1])


def _confusion(coco_gt: COCO, coco_dt: COCO, iou_type: str, threshold: float, classes: list[str],
               cat_ids: list[int]) -> ConfusionMatrix:
    """PreviewResults' class-agnostic confusion matrix, less crowd regions, with a background row."""
    preview = PreviewResults(coco_gt, coco_dt, iouType=iou_type, min_score=threshold, iou_tresh=0.5,
                             useCats=False)
    order = [int(c) for c in preview.cocoGt.cats]
    raw = preview.compute_confusion_matrix()[[order.index(c) for c in cat_ids]]  # K x (K + 2): ..., fp, fn
    k = len(cat_ids)
    columns = [order.index(c) for c in cat_ids]
    counts = np.zeros((k + 1, k + 1), dtype=np.int64)
    counts[:k, :k] = raw[:, columns]
    counts[k, :k] = raw[:, k]  # a class's spurious detections: background row, its column
    counts[:k, k] = raw[:, k + 1]  # a class's misses: its row, background column
    # PreviewResults counts crowd regions as objects (matched or missed); COCO does not, nor does this.
    label = {c: i for i, c in enumerate(cat_ids)}
    for ann in preview.cocoGt.anns.values():
        if ann.get("iscrowd", 0):
            dt_id = ann.get("dt_id")
            column = label[int(preview.cocoDt.anns[dt_id]["category_id"])] if dt_id is not None else k
            counts[label[int(ann["category_id"])], column] -= 1
    return ConfusionMatrix(classes=list(classes), counts=counts.tolist(), iou=0.5, score_threshold=threshold)


def _images(gt: dict[str, Any], results: list[dict[str, Any]], scores: np.ndarray, is_tp: np.ndarray,
            is_fp: np.ndarray, matched_gt: COCO, threshold: float) -> list[ImageResult]:
    """Per-image counts from the class-aware matching, keeping only detections scoring >= ``threshold``."""
    kept = scores >= threshold
    fps: dict[int, list[int]] = {}
    for i in np.argsort(-scores, kind="stable"):  # highest score first
        if kept[i] and is_fp[i]:
            fps.setdefault(int(results[i]["image_id"]), []).append(int(i))
    tps: dict[int, int] = {}
    for i in np.flatnonzero(kept & is_tp):
        image_id = int(results[i]["image_id"])
        tps[image_id] = tps.get(image_id, 0) + 1
    misses: dict[int, list[tuple[float, int]]] = {}
    for ann in matched_gt.anns.values():
        dt_id = ann.get("dt_id")
        if not ann.get("iscrowd", 0) and (dt_id is None or not kept[int(dt_id) - 1]):
            misses.setdefault(int(ann["image_id"]), []).append((-float(ann.get("area", 0.0)), int(ann["id"])))
    out = []
    for image in gt["images"]:
        image_id = int(image["id"])
        tp, fp_list = tps.get(image_id, 0), fps.get(image_id, [])
        missed = [ann_id for _, ann_id in sorted(misses.get(image_id, []))]
        fp, fn = len(fp_list), len(missed)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        out.append(ImageResult(image_id=image_id, tp=tp, fp=fp, fn=fn, f1=f1, false_positives=fp_list,
                               misses=missed))
    return out


def _errors(coco_gt: COCO, results: list[dict[str, Any]], iou_type: str, precision: np.ndarray,
            classes: list[str], cat_ids: list[int]) -> ErrorAnalysis:
    """Error analysis from the main evaluation's precision [IoU .1/.5/.75, R, K, A] and two more evaluations.

    Written here (no library has it), after pycocotools' ``analyze()`` / MMDetection's
    ``coco_error_analysis``: those evaluate each class k alone, with the ground truth of the classes to
    forgive confusion with turned into crowd regions of class k, at IoU 0.1. Here one evaluation does
    all classes at once: each image gets such crowd copies for each class it has detections of, so
    COCO's per-(image, class) matching sees exactly what the per-class runs would.
    """
    gt = coco_gt.dataset
    supers = {int(c["id"]): c.get("supercategory", f"\0{c['id']}") for c in gt["categories"]}
    c75, c50, loc = precision[2], precision[1], precision[0]
    oth = _forgiving(gt, results, iou_type, cat_ids, lambda own, other: True)
    one_super = len(set(supers.values())) == 1  # then Sim forgives what Oth does
    sim = oth if one_super else _forgiving(gt, results, iou_type, cat_ids,
                                           lambda own, other: supers[own] == supers[other])
    stages: dict[str, np.ndarray] = {"C75": c75, "C50": c50, "Loc": loc,
                                     "Sim": loc if sim is None else sim, "Oth": loc if oth is None else oth}
    stages["BG"] = np.where(stages["Oth"] > 0, 1.0, np.where(stages["Oth"] > -1, 0.0, -1.0))
    stages["FN"] = np.where(stages["Oth"] > -1, 1.0, -1.0)
    ap: dict[str, dict[str, dict[str, float]]] = {}
    for a, area in enumerate(AREAS):
        ap[area] = {name: {s: _ap(stages[s][:, k, a]) for s in STAGES} for k, name in enumerate(classes)}
        ap[area]["all"] = {s: _ap(_mean_curve(stages[s][:, :, a])) for s in STAGES}
    curves = {s: [_mean_curve(stages[s][:, :, 0]).tolist()] for s in STAGES}
    return ErrorAnalysis(stages=list(STAGES), ap=ap, curves=curves, recall=RECALL.tolist())


def _forgiving(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str, cat_ids: list[int],
               forgive: Callable[[int, int], bool]) -> np.ndarray | None:
    """Precision [R, K, A] at IoU 0.1 when, for each class, detections on the ground truth of the classes
    ``forgive(own, other)`` names are ignored; None when that adds no crowd copies (it equals Loc then)."""
    detected: dict[int, set[int]] = {}
    for r in results:
        detected.setdefault(int(r["image_id"]), set()).add(int(r["category_id"]))
    annotations = list(gt["annotations"])
    next_id = max((int(a["id"]) for a in annotations), default=0) + 1
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    for image_id, own_classes in detected.items():
        for own in own_classes:
            for ann in by_image.get(image_id, []):
                other = int(ann["category_id"])
                if other != own and forgive(own, other):
                    copy_ = {**ann, "id": next_id, "category_id": own, "iscrowd": 1, "ignore": 1}
                    annotations.append(copy_)
                    next_id += 1
    if len(annotations) == len(gt["annotations"]):
        return None
    coco = COCO({**gt, "annotations": annotations}, print_function=logger.debug)
    evaluator = _evaluate(coco, _load(coco, results), iou_type, [0.1])
    return _by_label(evaluator, cat_ids)[0]
