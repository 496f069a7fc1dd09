"""Owns COCO scoring: ground truth and detections in COCO JSON form, scored by faster-coco-eval."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from faster_coco_eval import COCO, COCOeval_faster

from segtune.data.coco_json import encode_masks, xyxy_to_xywh

logger = logging.getLogger(__name__)

#: The 12 numbers of COCO's standard summary, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def ground_truth(
    items: Sequence[tuple[int, str, int, int, dict[str, Any]]], classes: Sequence[str]
) -> dict[str, Any]:
    """COCO instances JSON for ``items`` of ``(image_id, file_name, height, width, target)``.

    ``target`` holds untransformed ``boxes`` (XYXY), ``labels``, ``masks``, ``area`` and ``iscrowd``.
    Labels are 1-based and equal the COCO category ids.
    """
    images, annotations = [], []
    for image_id, file_name, height, width, target in items:
        images.append({"id": int(image_id), "file_name": file_name, "height": int(height), "width": int(width)})
        rles = encode_masks(target["masks"]) if "masks" in target else [None] * len(target["boxes"])
        for box, label, area, crowd, rle in zip(
            xyxy_to_xywh(target["boxes"]), target["labels"].tolist(), target["area"].tolist(),
            target["iscrowd"].tolist(), rles,
        ):
            ann = {"id": len(annotations) + 1, "image_id": int(image_id), "category_id": int(label),
                   "bbox": box, "area": float(area), "iscrowd": int(crowd)}
            if rle is not None:
                ann["segmentation"] = rle
            annotations.append(ann)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections(image_id: int, output: dict[str, torch.Tensor], *, mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """COCO results entries for one image's model output (``boxes`` XYXY, ``scores``, ``labels``, ``masks``)."""
    boxes = output["boxes"]
    if len(boxes) == 0:
        return []
    rles: list[Any] = [None] * len(boxes)
    if "masks" in output:
        rles = encode_masks(output["masks"][:, 0] > mask_threshold)
    results = []
    for box, score, label, rle in zip(xyxy_to_xywh(boxes), output["scores"].tolist(), output["labels"].tolist(), rles):
        entry = {"image_id": int(image_id), "category_id": int(label), "bbox": box, "score": float(score)}
        if rle is not None:
            entry["segmentation"] = rle
        results.append(entry)
    return results


def score(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    *,
    print_fn: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Score ``results`` against ``gt`` with faster-coco-eval; return the 12 stats per IoU type.

    A value of -1 means "no ground truth to measure against" (COCO's convention). Empty results
    and images without objects are valid input.
    """
    print_fn = print_fn or logger.info
    coco_gt = COCO(copy.deepcopy(gt))  # faster-coco-eval adds fields to the annotations it is given
    out: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        # loadRes fills in areas and ids; give it copies so bbox and segm runs do not see each other's edits.
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=print_fn)
        print_fn(f"IoU metric: {iou_type}")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        out[iou_type] = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats[:12])}
    return out
