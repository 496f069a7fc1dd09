"""Owns evaluating a model on a data set split: inference, COCO scoring, and the report."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from segtune.checkpoint import load_checkpoint
from segtune.data import build_dataset, build_loader
from segtune.evaluation.coco_eval import detections, ground_truth, score
from segtune.models import model_from_checkpoint
from segtune.runtime import default_workers, resolve_device, track

logger = logging.getLogger(__name__)


@dataclass
class EvalReport:
    """What one evaluation produced: ``metrics[iou_type][stat]`` and the printed summary lines."""

    metrics: dict[str, dict[str, float]]
    summary: list[str] = field(default_factory=list)
    num_images: int = 0
    num_detections: int = 0

    def primary(self) -> float:
        """segm AP when the model predicts masks, bbox AP otherwise."""
        return self.metrics.get("segm", self.metrics["bbox"])["AP"]


def dataset_ground_truth(dataset: Any, classes: list[str]) -> dict[str, Any]:
    """COCO JSON of a data set's untransformed targets (decodes every image and mask once)."""
    items = []
    for i in range(len(dataset)):
        image, target = dataset.load(i)
        height, width = image.shape[:2]
        items.append((dataset.image_id(i), dataset.files[i], height, width, target))
    return ground_truth(items, classes)


def has_masks(model: nn.Module) -> bool:
    roi_heads = getattr(model, "roi_heads", None)
    return bool(roi_heads is not None and roi_heads.has_mask())


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
) -> EvalReport:
    """Run ``model`` over ``dataset`` and score it with COCO bbox (and segm) AP.

    ``gt`` may be passed in to reuse ground truth across epochs (see :func:`dataset_ground_truth`).
    """
    if gt is None:
        gt = dataset_ground_truth(dataset, classes)
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    loader = build_loader(dataset, batch_size=batch_size, train=False, workers=workers)
    try:
        for images, targets in track(loader, total=len(loader), desc="evaluate"):
            outputs = model([img.to(device) for img in images])
            for target, output in zip(targets, outputs):
                results.extend(detections(target["image_id"], {k: v.cpu() for k, v in output.items()},
                                          mask_threshold=mask_threshold))
    finally:
        model.train(was_training)
    summary: list[str] = []
    shown: dict[str, int] = {}

    def record(line: str) -> None:
        # Show COCO's standard 12-line summary per IoU type; faster-coco-eval's progress chatter and
        # its two extra recall lines go to the debug log.
        if line.startswith("IoU metric:"):
            shown["type"] = 0
        elif line.lstrip().startswith("Average") and shown.get("type", 12) < 12:
            shown["type"] += 1
        else:
            logger.debug("%s", line)
            return
        summary.append(line)
        logger.info("%s", line)

    iou_types = ("bbox", "segm") if has_masks(model) else ("bbox",)
    metrics = score(gt, results, iou_types, print_fn=record)
    return EvalReport(metrics=metrics, summary=summary, num_images=len(dataset), num_detections=len(results))


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data: str | None = None,
    split: str = "test",
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
) -> EvalReport:
    """Evaluate a segtune checkpoint on a split of its data set (the split saved with the run).

    Args:
        checkpoint: a ``.pt`` file or a run folder (its ``weights/best.pt`` is used).
        data: the data set folder, if it moved since training (default: the one in the checkpoint).
        split: ``test``, ``train`` or ``all``.
    """
    ckpt = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ckpt)
    if data is not None:
        cfg.data.path = data
    dev = resolve_device(device)
    files = None if split == "all" else ckpt.get("split", {}).get(split)
    dataset = build_dataset(cfg.data, files=files, train=False)
    logger.info("evaluating %s on %d %s images of %s", ckpt["path"], len(dataset), split, dataset.root)
    return evaluate_model(
        model.to(dev), dataset, list(ckpt["classes"]), device=dev,
        batch_size=batch_size or cfg.eval.batch_size, workers=default_workers(dev, workers),
        mask_threshold=cfg.eval.mask_threshold,
    )
