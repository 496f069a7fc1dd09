"""Owns evaluating a model on a data set split: inference, COCO scoring, and the report."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from segtune.data import build_dataset, build_loader
from segtune.evaluation.coco_eval import detections, ground_truth, gt_has_keypoints, score, stat_names
from segtune.models import family_of
from segtune.models.family import unwrap
from segtune.models.precision import autocast, float_outputs, inference_precision
from segtune.machine import default_workers, resolve_device, track
from segtune.runtimes import open_model

logger = logging.getLogger(__name__)


@dataclass
class EvalReport:
    """What one evaluation produced: ``metrics[iou_type][stat]`` and the printed summary lines."""

    metrics: dict[str, dict[str, float]]
    summary: list[str] = field(default_factory=list)
    num_images: int = 0
    num_detections: int = 0
    #: ``{iou_type: {class name: AP}}``
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the COCO results scored (category ids, RLE masks) and the ground truth they were scored against
    results: list[dict[str, Any]] = field(default_factory=list, repr=False)
    gt: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the data set evaluated (for a report's pictures and label statistics)
    dataset: Any = field(default=None, repr=False)


def primary_metric(metrics: dict[str, dict[str, float]]) -> float:
    """segm AP when the model predicts masks, else keypoints AP when it predicts keypoints, else bbox AP.

    The AP of the most specific output the model was trained for: a Keypoint R-CNN is fine-tuned
    for its keypoints, and its box AP (a person detector's, almost unchanged by the keypoint head)
    would pick a best checkpoint whose keypoints may be worse.
    """
    for iou_type in ("segm", "keypoints", "bbox"):
        if iou_type in metrics:
            return metrics[iou_type]["AP"]
    return -1.0


def dataset_ground_truth(dataset: Any, classes: list[str]) -> dict[str, Any]:
    """COCO JSON of a data set's targets as annotated (reads every annotation and mask once, no image).

    Its categories carry the data set's own ids (``dataset.category_ids``), and its boxes and areas
    are the data set's own where it has them (a COCO file's ``bbox`` and ``area``), else the
    documented convention (:mod:`segtune.data.boxes`): scored as pycocotools scores the same file.
    """
    items = []
    for i in range(len(dataset)):
        height, width, target = dataset.annotation(i)  # the annotations only: no image is decoded
        items.append((dataset.image_id(i), dataset.files[i], height, width, target))
    return ground_truth(items, classes, category_ids=category_ids_of(dataset, classes),
                        keypoint_names=getattr(dataset, "keypoint_names", None),
                        skeleton=getattr(dataset, "skeleton", None))


def category_ids_of(dataset: Any, classes: list[str]) -> list[int]:
    """The data set's own id of each class (COCO category ids), or 1..C for formats without ids."""
    ids = list(getattr(dataset, "category_ids", None) or [])
    return ids if len(ids) == len(classes) else list(range(1, len(classes) + 1))


def iou_types_for(model: nn.Module, outputs_keys: set[str], gt: dict[str, Any]) -> tuple[str, ...]:
    """What to score: ``bbox`` always, ``segm`` for masks, ``keypoints`` for keypoints the ground truth has too.

    Taken from the keys the model's outputs had (torchvision detectors return ``masks`` and
    ``keypoints`` even for images without detections), else from what its family declares.
    """
    outputs_keys = set(outputs_keys) | set(family_of(model).outputs(unwrap(model)))
    types = ["bbox"]
    if "masks" in outputs_keys:
        types.append("segm")
    if "keypoints" in outputs_keys:
        if gt_has_keypoints(gt):
            types.append("keypoints")
        else:
            logger.warning("the model predicts keypoints but the ground truth has none: keypoint AP not scored")
    return tuple(types)


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    dataset: Any,
    classes: list[str],
    *,
    device: torch.device,
    batch_size: int = 1,
    workers: int = 0,
    mask_threshold: float = 0.5,
    gt: dict[str, Any] | None = None,
    shard: tuple[int, int] = (0, 1),
    gather: Callable[[Any], list[Any]] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> EvalReport:
    """Run ``model`` over ``dataset`` and score it with COCO AP: bbox, and segm / keypoints when it predicts them.

    ``gt`` may be passed in to reuse ground truth across epochs (see :func:`dataset_ground_truth`).
    In distributed evaluation, ``shard=(rank, world_size)`` runs this process on every
    ``world_size``-th image (no padding, so no image is scored twice) and ``gather`` (an all-gather of
    Python objects) collects every process's detections before scoring, so the AP equals a
    single-process evaluation of the same model. ``autocast_dtype`` runs the model under autocast (see
    :func:`~segtune.models.precision.inference_precision`, which readies the model for it).
    """
    if gt is None:
        gt = dataset_ground_truth(dataset, classes)
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    output_keys: set[str] = set()
    rank, world = shard
    category_ids = category_ids_of(dataset, classes)
    part = dataset if world == 1 else torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
    loader = build_loader(part, batch_size=batch_size, train=False, workers=workers)
    try:
        for images, targets in track(loader, total=len(loader), desc="evaluate"):
            with autocast(device, autocast_dtype):
                outputs = float_outputs(model([img.to(device) for img in images]))
            for target, output in zip(targets, outputs):
                output_keys.update(output)
                results.extend(detections(target["image_id"], {k: v.cpu() for k, v in output.items()},
                                          category_ids=category_ids, mask_threshold=mask_threshold))
    finally:
        model.train(was_training)
    if gather is not None and world > 1:
        gathered = gather((results, sorted(output_keys)))
        results = [r for part_results, _ in gathered for r in part_results]
        output_keys = {k for _, keys in gathered for k in keys}
    summary: list[str] = []
    shown = {"left": 0}

    def record(line: str) -> None:
        # Show COCO's standard summary per IoU type (12 lines, 10 for keypoints); faster-coco-eval's
        # progress chatter and its extra recall lines go to the debug log.
        if line.startswith("IoU metric:"):
            shown["left"] = len(stat_names(line.split(":", 1)[1].strip()))
        elif line.lstrip().startswith("Average") and shown["left"] > 0:
            shown["left"] -= 1
        else:
            logger.debug("%s", line)
            return
        summary.append(line)
        logger.info("%s", line)

    iou_types = iou_types_for(model, output_keys, gt)
    per_class: dict[str, dict[str, float]] = {}
    metrics = score(gt, results, iou_types, print_fn=record, per_class=per_class)
    if len(gt["categories"]) > 1:
        for iou_type, aps in per_class.items():
            line = f"per-class {iou_type} AP: " + ", ".join(f"{name} {ap:.3f}" for name, ap in aps.items())
            summary.append(line)
            logger.info("%s", line)
    return EvalReport(metrics=metrics, summary=summary, num_images=len(dataset), num_detections=len(results),
                      per_class=per_class, results=results, gt=gt, dataset=dataset)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data: str | None = None,
    split: str = "test",
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    amp: str = "auto",
) -> EvalReport:
    """Evaluate a segtune checkpoint, or a file written by ``segtune export``, on a split of its data set (the
    split saved with the run; an exported file's is its checkpoint's while that checkpoint is where it was
    exported from, else give ``data`` with ``split="all"``).

    Args:
        checkpoint: a ``.pt`` file, a run folder (its ``weights/best.pt`` is used), or an exported file.
        data: the data set folder, if it moved since training (default: the one in the checkpoint).
        split: ``test``, ``train`` or ``all``.
        amp: ``none`` (float32), ``bf16`` (autocast with channels-last weights) or ``auto`` (the faster of the
            two for this model on this machine, measured once: :mod:`segtune.models.fastest`); an exported
            file runs as it was exported.
    """
    dev = resolve_device(device)
    loaded = open_model(checkpoint, device=dev, amp=amp)
    data_cfg, files = loaded.split_data(split, data)
    dataset = build_dataset(data_cfg, files=files, train=False)
    model = loaded.model.to(dev)
    if loaded.exported:
        if float(loaded.meta.get("min_score", 0.0)) > 0.05:
            logger.warning("%s drops detections scoring below %.2f inside it (exported with --score-threshold), so "
                           "its AP counts only those and is lower than its checkpoint's", checkpoint,
                           loaded.meta["min_score"])
        logger.info("evaluating %s (%s) on %d %s images of %s", checkpoint, loaded.runtime, len(dataset), split,
                    dataset.root)
        batch_size, dtype = 1, None
    else:
        logger.info("evaluating %s on %d %s images of %s", loaded.path, len(dataset), split, dataset.root)
        batch_size = batch_size or loaded.config.eval.batch_size
        dtype = inference_precision(model, amp, dev)
    return evaluate_model(model, dataset, loaded.classes, device=dev, batch_size=batch_size,
                          workers=default_workers(dev, workers), mask_threshold=loaded.mask_threshold,
                          autocast_dtype=dtype)
