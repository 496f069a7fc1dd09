"""Owns COCO scoring: ground truth and detections in COCO JSON form, scored by faster-coco-eval."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster

from segtune.data.coco_json import encode_masks, xyxy_to_xywh

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
    keypoint_names: Sequence[str] | None = None,
    skeleton: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """COCO instances (or person-keypoints) JSON for ``items`` of ``(image_id, file_name, height, width, target)``.

    ``target`` holds untransformed ``boxes`` (XYXY), ``labels``, ``masks``, ``area`` and ``iscrowd``,
    and for keypoint data sets ``keypoints`` float[N, K, 3] (x, y, visibility 0/1/2 in pixels).
    Labels are 1-based and equal the COCO category ids. Annotations then carry ``keypoints``
    (K x 3 numbers) and ``num_keypoints`` (labelled ones, v > 0: COCO ignores annotations with none),
    and categories carry ``keypoints`` (``keypoint_names``) and ``skeleton`` (1-based pairs, as COCO).
    """
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
            xyxy_to_xywh(target["boxes"]), target["labels"].tolist(), target["area"].tolist(),
            target["iscrowd"].tolist(), rles,
        )):
            ann = {"id": len(annotations) + 1, "image_id": int(image_id), "category_id": int(label),
                   "bbox": box, "area": float(area), "iscrowd": int(crowd)}
            if rle is not None:
                ann["segmentation"] = rle
            if flat[k] is not None:
                ann["keypoints"] = flat[k]
                ann["num_keypoints"] = int(visible[k])
            annotations.append(ann)
    categories: list[dict[str, Any]] = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    if keypoint_names:
        for cat in categories:
            cat["keypoints"] = list(keypoint_names)
            cat["skeleton"] = [list(pair) for pair in skeleton or []]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections(image_id: int, output: dict[str, torch.Tensor], *, mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """COCO results entries for one image's model output.

    ``output`` holds ``boxes`` float[N, 4] XYXY, ``scores``, ``labels``, and optionally ``masks``
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
        entry = {"image_id": int(image_id), "category_id": int(label), "bbox": box, "score": float(score)}
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

    ``bbox`` and ``segm`` give the 12 :data:`STAT_NAMES`, ``keypoints`` (OKS) the 10
    :data:`KEYPOINT_STAT_NAMES`. A value of -1 means "no ground truth to measure against" (COCO's
    convention). Empty results and images without objects are valid input.

    Args:
        kpt_sigmas: per-keypoint OKS sigmas; default COCO's for 17 keypoints, else
            :data:`UNIFORM_KEYPOINT_SIGMA` for each (see there why).
        per_class: if given, filled with ``{iou_type: {category name: AP}}`` (AP at IoU 0.50:0.95,
            all areas, 100 detections; -1 for a class with no ground truth).
    """
    print_fn = print_fn or logger.info
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
