"""Owns COCO scoring: ground truth and detections in COCO JSON form, scored by faster-coco-eval.

Two id spaces meet here, and the API keeps them apart:

- **labels**: what segtune's models predict and its targets hold, contiguous 1..C in the order of
  the data set's classes;
- **category ids**: the data set's own ids (COCO's ``category_id``, which need not be contiguous; for
  formats without ids, 1..C). ``category_ids[label - 1]`` is the id of a label.

The ground truth JSON (:func:`ground_truth`) and the results (:func:`detections`) both carry category
ids, as COCO files do, so a results file written by anyone for a COCO data set scores as it would
in pycocotools. :func:`score` refuses results whose ids are not in the ground truth.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster

from segtune.data.coco_json import encode_masks, xyxy_to_xywh
from segtune.errors import EvaluationError

logger = logging.getLogger(__name__)

#: The 12 numbers of COCO's standard summary for ``bbox`` and ``segm``, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: The 10 numbers of COCO's keypoint summary, in its order (at most 20 detections per image; no
#: small-object range, since COCO does not label keypoints on small people).
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

#: COCO's 17 person keypoints' sigmas (faster-coco-eval's and pycocotools' default), for K = 17.
NUM_COCO_KEYPOINTS = 17
#: The per-keypoint OKS sigma used when a data set has K != 17 keypoints. OKS needs one sigma per
#: keypoint (how far, relative to the object's size, an annotator's clicks spread); COCO measured
#: them only for its 17 person keypoints, and nothing is known about other keypoint sets. The mean
#: of COCO's 17 sigmas (0.0669) treats every keypoint as one of average COCO difficulty, so an OKS
#: of 0.5 means roughly what it means on COCO persons. Pass ``kpt_sigmas`` to :func:`score` to use
#: measured ones.
UNIFORM_KEYPOINT_SIGMA = 0.0669


def stat_names(iou_type: str) -> tuple[str, ...]:
    """The names of COCO's summary numbers for ``iou_type`` (``bbox``, ``segm`` or ``keypoints``)."""
    return KEYPOINT_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES


def ground_truth(
    items: Sequence[tuple[int, str, int, int, dict[str, Any]]],
    classes: Sequence[str],
    *,
    category_ids: Sequence[int] | None = None,
    keypoint_names: Sequence[str] | None = None,
    skeleton: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """COCO instances (or person-keypoints) JSON for ``items`` of ``(image_id, file_name, height, width, target)``.

    ``target`` holds untransformed ``boxes`` (XYXY), ``labels`` (1-based, contiguous), ``masks``,
    ``area`` and ``iscrowd``, and for keypoint data sets ``keypoints`` float[N, K, 3] (x, y,
    visibility 0/1/2 in pixels). Boxes and areas are written as given: for a COCO file they are its
    own ``bbox`` and ``area``, so scoring matches pycocotools on that file.

    Args:
        classes: the class names, label order.
        category_ids: the id of each class (``category_ids[label - 1]``), written as the categories'
            ids and the annotations' ``category_id``; default 1..C.

    Annotations carry ``keypoints`` (K x 3 numbers) and ``num_keypoints`` (labelled ones, v > 0: COCO
    ignores annotations with none), and categories carry ``keypoints`` (``keypoint_names``) and
    ``skeleton`` (1-based pairs, as COCO).
    """
    ids = _check_category_ids(classes, category_ids)
    images, annotations = [], []
    for image_id, file_name, height, width, target in items:
        images.append({"id": int(image_id), "file_name": file_name, "height": int(height), "width": int(width)})
        n = len(target["boxes"])
        rles = encode_masks(target["masks"]) if "masks" in target else [None] * n
        points = target.get("keypoints")
        flat: list[Any] = [None] * n
        if points is not None:
            flat = points.to(torch.float64).flatten(1).tolist()
            visible = (points[..., 2] > 0).sum(dim=1).tolist()
        for k, (box, label, area, crowd, rle) in enumerate(zip(
            xyxy_to_xywh(target["boxes"]), target["labels"].tolist(), target["area"].to(torch.float64).tolist(),
            target["iscrowd"].tolist(), rles,
        )):
            ann = {"id": len(annotations) + 1, "image_id": int(image_id), "category_id": _category_of(label, ids),
                   "bbox": box, "area": float(area), "iscrowd": int(crowd)}
            if rle is not None:
                ann["segmentation"] = rle
            if flat[k] is not None:
                ann["keypoints"] = flat[k]
                ann["num_keypoints"] = int(visible[k])
            annotations.append(ann)
    categories: list[dict[str, Any]] = [{"id": cat_id, "name": name} for cat_id, name in zip(ids, classes)]
    if keypoint_names:
        for cat in categories:
            cat["keypoints"] = list(keypoint_names)
            cat["skeleton"] = [list(pair) for pair in skeleton or []]
    return {"images": images, "annotations": annotations, "categories": categories}


def _check_category_ids(classes: Sequence[str], category_ids: Sequence[int] | None) -> list[int]:
    if category_ids is None:
        return list(range(1, len(classes) + 1))
    ids = [int(i) for i in category_ids]
    if len(ids) != len(classes) or len(set(ids)) != len(ids):
        raise EvaluationError(f"category_ids {ids} must name each of the {len(classes)} classes once")
    return ids


def _category_of(label: int, category_ids: Sequence[int]) -> int:
    """The category id of 1-based ``label``; a label outside 1..C is a clear error, not a silent miss."""
    if not 1 <= label <= len(category_ids):
        raise EvaluationError(f"label {label} is outside the {len(category_ids)} classes (labels are 1..{len(category_ids)})")
    return int(category_ids[label - 1])


def detections(image_id: int, output: dict[str, torch.Tensor], *, category_ids: Sequence[int] | None = None,
               mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """COCO results entries for one image's model output, with ``category_id = category_ids[label - 1]``
    (default: the label itself, for data sets whose ids are 1..C).

    ``output`` holds ``boxes`` float[N, 4] XYXY, ``scores``, ``labels`` (1-based), and optionally ``masks``
    float[N, 1, H, W] (probabilities), ``keypoints`` float[N, K, 3] (x, y, visibility) and
    ``keypoints_scores`` float[N, K]. Entries get ``bbox`` (XYWH) and, when present,
    ``segmentation`` (RLE), ``keypoints`` (K x 3 numbers) and ``keypoint_scores`` (K numbers, not
    used by COCO scoring).
    """
    boxes = output["boxes"]
    n = len(boxes)
    if n == 0:
        return []
    rles: list[Any] = [None] * n
    if "masks" in output:
        rles = encode_masks(output["masks"][:, 0] > mask_threshold)
    points: list[Any] = [None] * n
    if "keypoints" in output:
        points = output["keypoints"].to(torch.float64).flatten(1).tolist()
    point_scores: list[Any] = [None] * n
    if "keypoints_scores" in output:
        point_scores = output["keypoints_scores"].to(torch.float64).flatten(1).tolist()
    results = []
    for box, score, label, rle, kps, kps_scores in zip(
        xyxy_to_xywh(boxes), output["scores"].tolist(), output["labels"].tolist(), rles, points, point_scores
    ):
        category = _category_of(label, category_ids) if category_ids is not None else int(label)
        entry = {"image_id": int(image_id), "category_id": category, "bbox": box, "score": float(score)}
        if rle is not None:
            entry["segmentation"] = rle
        if kps is not None:
            entry["keypoints"] = kps
        if kps_scores is not None:
            entry["keypoint_scores"] = kps_scores
        results.append(entry)
    return results


def keypoint_sigmas(gt: dict[str, Any]) -> list[float] | None:
    """OKS sigmas for ``gt``'s keypoints: None (COCO's own 17) for K = 17, else K uniform ones."""
    k = 0
    for cat in gt.get("categories", []):
        k = max(k, len(cat.get("keypoints") or []))
    if not k:
        k = max((len(a["keypoints"]) // 3 for a in gt.get("annotations", []) if a.get("keypoints")), default=0)
    if k in (0, NUM_COCO_KEYPOINTS):
        return None
    return [UNIFORM_KEYPOINT_SIGMA] * k


def gt_has_keypoints(gt: dict[str, Any]) -> bool:
    """Whether ``gt`` has keypoint annotations to score against."""
    return any("keypoints" in a for a in gt.get("annotations", [])) or any(
        cat.get("keypoints") for cat in gt.get("categories", []))


def score(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    *,
    print_fn: Callable[[str], None] | None = None,
    kpt_sigmas: Sequence[float] | None = None,
    per_class: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Score ``results`` against ``gt`` with faster-coco-eval; return COCO's summary per IoU type.

    ``results`` are COCO results entries whose ``category_id`` and ``image_id`` are the ground
    truth's (see the module's note on labels and category ids; :func:`detections` maps labels).

    ``bbox`` and ``segm`` give the 12 :data:`STAT_NAMES`, ``keypoints`` (OKS) the 10
    :data:`KEYPOINT_STAT_NAMES`. A value of -1 means "no ground truth to measure against" (COCO's
    convention). Empty results and images without objects are valid input.

    Args:
        kpt_sigmas: per-keypoint OKS sigmas; default COCO's for 17 keypoints, else
            :data:`UNIFORM_KEYPOINT_SIGMA` for each (see there why).
        per_class: if given, filled with ``{iou_type: {category name: AP}}`` (AP at IoU 0.50:0.95,
            all areas, 100 detections; -1 for a class with no ground truth).

    Raises:
        EvaluationError: a result's ``category_id`` or ``image_id`` is not in ``gt``.
    """
    print_fn = print_fn or logger.info
    check_results(gt, results)
    coco_gt = COCO(copy.deepcopy(gt))  # faster-coco-eval adds fields to the annotations it is given
    out: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        sigmas = None
        if iou_type == "keypoints":
            sigmas = list(kpt_sigmas) if kpt_sigmas is not None else keypoint_sigmas(gt)
        # loadRes fills in areas and ids; give it copies so the runs of each type do not see each other's edits.
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=print_fn)
        if sigmas is not None:
            # Set on params (pycocotools' attribute) rather than the constructor's kpt_oks_sigmas,
            # which older faster-coco-eval releases do not take.
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        print_fn(f"IoU metric: {iou_type}")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        names = stat_names(iou_type)
        out[iou_type] = {name: float(v) for name, v in zip(names, evaluator.stats[:len(names)])}
        if per_class is not None:
            per_class[iou_type] = _per_class_ap(evaluator, gt)
    return out


def check_results(gt: dict[str, Any], results: Sequence[dict[str, Any]]) -> None:
    """Raise :class:`EvaluationError` when ``results`` name categories or images ``gt`` does not have.

    COCO scoring would count such detections as false positives of a class that does not exist (or
    assert on unknown images), and report a low AP with no word of why.
    """
    known = [int(c["id"]) for c in gt["categories"]]
    known_set = set(known)
    unknown = sorted({r["category_id"] for r in results if r.get("category_id") not in known_set}, key=str)
    if unknown:
        contiguous = known != list(range(1, len(known) + 1))
        hint = (f"; if these are segtune's labels 1..{len(known)}, map them with "
                f"detections(..., category_ids=...)" if contiguous else "")
        raise EvaluationError(
            f"{len(unknown)} category id(s) in the results are not in the ground truth: "
            f"{', '.join(map(str, unknown[:10]))}{', ...' if len(unknown) > 10 else ''} "
            f"(its category ids: {_id_list(known)}){hint}")
    images = {int(i["id"]) for i in gt["images"]}
    stray = sorted({r["image_id"] for r in results if r.get("image_id") not in images}, key=str)
    if stray:
        raise EvaluationError(
            f"{len(stray)} image id(s) in the results are not in the ground truth: "
            f"{', '.join(map(str, stray[:10]))}{', ...' if len(stray) > 10 else ''}")


def _id_list(ids: Sequence[int]) -> str:
    return ", ".join(map(str, ids[:12])) + (f", ... ({len(ids)} in all)" if len(ids) > 12 else "")


def _per_class_ap(evaluator: Any, gt: dict[str, Any]) -> dict[str, float]:
    """AP per category from the accumulated precision table (COCO's summary averages these).

    ``eval["precision"]`` is [IoU thresholds, recall points, categories, area ranges, max dets];
    area range 0 is "all" and the last max-dets entry is 100. -1 marks "no ground truth".
    """
    precision = evaluator.eval["precision"]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        out[names[int(cat_id)]] = float(values.mean()) if values.size else -1.0
    return out
