"""Owns the report's pictures of the test images: ground truth beside prediction, worst image first, and
crops of the worst false positives and of the missed objects.

Drawn with torchvision's ``draw_segmentation_masks`` / ``draw_bounding_boxes`` on thumbnails and
embedded as JPEG data URIs. Ground truth and detections come as COCO JSON (RLE masks), the form
the evaluation scored, so the pictures show exactly what was scored.
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from faster_coco_eval.core import mask as mask_utils
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

#: Longest side of a gallery picture (each of ground truth and prediction), in pixels.
THUMB = 300
#: Side of a false-positive or miss crop.
CROP = 128
#: Images the gallery shows at most (the worst ones): the page of a 5,000-image test split stays light.
MAX_GALLERY = 500
#: Crops of each kind (false positives, misses) at most.
MAX_CROPS = 24
_GT_COLOUR, _FP_COLOUR, _TP_COLOUR = (0, 200, 80), (255, 40, 40), (30, 144, 255)


@dataclass
class GalleryItem:
    """One test image in the gallery."""

    name: str
    f1: float
    tp: int
    fp: int
    fn: int
    picture: str  # data URI: ground truth (left) beside prediction (right)


@dataclass
class Crop:
    name: str      # the image
    caption: str   # class, score or area
    picture: str   # data URI


def _jpeg(image: torch.Tensor, quality: int = 80) -> str:
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _masks(anns: list[dict[str, Any]], height: int, width: int) -> torch.Tensor | None:
    rles = [a["segmentation"] for a in anns if isinstance(a.get("segmentation"), dict)]
    if not anns or len(rles) != len(anns):
        return None
    rles = [{"size": r["size"], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str)
             else r["counts"]} if not isinstance(r["counts"], list) else mask_utils.frPyObjects(r, height, width)
            for r in rles]
    return torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rles))).permute(2, 0, 1).bool()


def _thumbnail(array: np.ndarray, side: int) -> tuple[torch.Tensor, float]:
    image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    scale = min(1.0, side / max(image.shape[1:]))
    size = [max(1, round(image.shape[1] * scale)), max(1, round(image.shape[2] * scale))]
    return F.resize(image, size, antialias=True), scale


def _overlay(image: torch.Tensor, scale: float, anns: list[dict[str, Any]], names: dict[int, str],
             colours: list[tuple[int, int, int]], height: int, width: int, *, scores: bool) -> torch.Tensor:
    if not anns:
        return image
    h, w = image.shape[1:]
    masks = _masks(anns, height, width)
    out = image
    if masks is not None:
        masks = F.resize(masks.to(torch.uint8), [h, w], interpolation=InterpolationMode.NEAREST).bool()
        out = draw_segmentation_masks(out, masks, alpha=0.45, colors=colours)
    boxes = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)],
                         dtype=torch.float32) * scale
    labels = [names.get(a["category_id"], str(a["category_id"])) + (f" {a['score']:.2f}" if scores else "")
              for a in anns]
    return draw_bounding_boxes(out, boxes, labels=labels, colors=colours, width=2)


def build_gallery(dataset: Any, gt: dict[str, Any], results: list[dict[str, Any]], per_image: list[Any],
                  score_threshold: float, *, max_items: int = MAX_GALLERY) -> tuple[list[GalleryItem], list[Crop], list[Crop]]:
    """The gallery (worst per-image F1 first, at most ``max_items``), the worst false positives (highest
    score first) and the misses (largest first) as crops.

    ``per_image`` holds the analysis' per-image results (``image_id``, ``tp``, ``fp``, ``fn``, ``f1``,
    ``false_positives``: indices into ``results``, ``misses``: ground-truth annotation ids).
    """
    names = {int(c["id"]): c["name"] for c in gt["categories"]}
    gt_by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    gt_by_id = {}
    for ann in gt["annotations"]:
        gt_by_image[int(ann["image_id"])].append(ann)
        gt_by_id[int(ann["id"])] = ann
    dt_by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r["score"] >= score_threshold:
            dt_by_image[int(r["image_id"])].append(r)
    index_of = {int(dataset.image_id(i)): i for i in range(len(dataset))}
    order = sorted(per_image, key=lambda r: (r.f1, -(r.fp + r.fn)))[:max_items]
    fp_refs = sorted(((results[k]["score"], k, r.image_id) for r in per_image for k in r.false_positives
                      if results[k]["score"] >= score_threshold), reverse=True)[:MAX_CROPS]
    miss_refs = sorted(((gt_by_id[a].get("area", 0.0), a, r.image_id) for r in per_image for a in r.misses),
                       reverse=True)[:MAX_CROPS]
    shown = {r.image_id: r for r in order}
    wanted = set(shown) | {ref[2] for ref in fp_refs} | {ref[2] for ref in miss_refs}
    items: dict[int, GalleryItem] = {}
    fps: list[tuple[float, Crop]] = []
    misses: list[tuple[float, Crop]] = []
    for image_id in sorted(wanted, key=lambda i: index_of.get(i, -1)):
        if image_id not in index_of:
            continue
        i = index_of[image_id]
        array = dataset.read_image(i)
        height, width = array.shape[:2]
        name = dataset.files[i]
        result = shown.get(image_id)
        if result is not None:
            thumb, scale = _thumbnail(array, THUMB)
            gts = [a for a in gt_by_image[image_id] if not a.get("iscrowd")]
            dts = dt_by_image[image_id]
            bad = {id(results[k]) for k in result.false_positives}
            left = _overlay(thumb, scale, gts, names, [_GT_COLOUR] * len(gts), height, width, scores=False)
            right = _overlay(thumb, scale, dts, names, [_FP_COLOUR if id(d) in bad else _TP_COLOUR for d in dts],
                             height, width, scores=True)
            gap = torch.full((3, thumb.shape[1], 6), 255, dtype=torch.uint8)
            items[image_id] = GalleryItem(name, result.f1, result.tp, result.fp, result.fn,
                                          _jpeg(torch.cat([left, gap, right], dim=2)))
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        for score, k, ref_image in fp_refs:
            if ref_image == image_id:
                r = results[k]
                fps.append((score, Crop(name, f"{names.get(r['category_id'], r['category_id'])} {score:.2f}",
                                        _crop(image, r["bbox"], _FP_COLOUR))))
        for area, ann_id, ref_image in miss_refs:
            if ref_image == image_id:
                a = gt_by_id[ann_id]
                misses.append((area, Crop(name, f"{names.get(a['category_id'], a['category_id'])}, {area:.0f} px",
                                          _crop(image, a["bbox"], _GT_COLOUR))))
    gallery = [items[r.image_id] for r in order if r.image_id in items]
    return (gallery, [c for _, c in sorted(fps, key=lambda t: -t[0])],
            [c for _, c in sorted(misses, key=lambda t: -t[0])])


def _crop(image: torch.Tensor, bbox: list[float], colour: tuple[int, int, int]) -> str:
    """The box's region with a margin, fitted into :data:`CROP` pixels, the box drawn."""
    height, width = image.shape[1:]
    x, y, w, h = bbox
    margin = 0.25 * max(w, h) + 4
    x0, y0 = int(max(0, x - margin)), int(max(0, y - margin))
    x1, y1 = int(min(width, x + w + margin)), int(min(height, y + h + margin))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    region = image[:, y0:y1, x0:x1]
    scale = CROP / max(region.shape[1:])
    size = [max(1, round(region.shape[1] * scale)), max(1, round(region.shape[2] * scale))]
    region = F.resize(region, size, antialias=True)
    box = torch.tensor([[x - x0, y - y0, x - x0 + w, y - y0 + h]], dtype=torch.float32) * scale
    return _jpeg(draw_bounding_boxes(region, box, colors=[colour], width=2))
