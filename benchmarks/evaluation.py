"""COCO bbox + segm evaluation time of faster-coco-eval (what segtune scores with) against pycocotools.

One command:  .venv/bin/python benchmarks/evaluation.py [--synthetic 5000] [--repeat 3]

Both libraries score identical detections against identical ground truth, in this one process:
(a) the 50 test images of Penn-Fudan's default split, with detections made from the ground truth by
jittering it (boxes shifted a few pixels, masks eroded or dilated, some objects missed, random
scores, a few false positives per image), so no model is needed; (b) ``--synthetic`` images of
64x64 pixels with 1-5 random rectangles or ellipses each, jittered the same way. Each timing covers
what a scoring run does for both IoU types: building the ground-truth index, ``loadRes``,
``evaluate``, ``accumulate`` and ``summarize`` (best of ``--repeat`` runs, alternating the two
libraries, after one untimed run of each). The 12 summary numbers
of both libraries must agree; their largest difference is printed. Prints a Markdown table and
writes benchmarks/results/evaluation.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time
from importlib.metadata import version
from typing import Any

import numpy as np
import torch

from common import DATA, write_result
import torch.nn.functional as F
from faster_coco_eval.core import mask as mask_utils

from segtune.config import DataConfig
from segtune.data import build_dataset, make_split, open_dataset
from segtune.evaluation import dataset_ground_truth
from segtune.evaluation.coco_eval import STAT_NAMES, score

NAME = "evaluation.json"
IOU_TYPES = ("bbox", "segm")


def encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE (``counts`` as str) of one binary ``uint8[H, W]`` mask."""
    rle = mask_utils.encode(np.asfortranarray(mask[:, :, None].astype(np.uint8)))[0]
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_box(mask: np.ndarray) -> list[float] | None:
    """``[x, y, w, h]`` of a mask's foreground, None when it is empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def morph(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate (``radius`` > 0) or erode (< 0) a binary mask with a square of side ``2|radius| + 1``."""
    if radius == 0:
        return mask
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    k = 2 * abs(radius) + 1
    if radius > 0:
        t = F.max_pool2d(t, k, stride=1, padding=abs(radius))
    else:  # erosion is dilation of the background
        t = 1 - F.max_pool2d(1 - t, k, stride=1, padding=abs(radius))
    return t[0, 0].numpy().astype(np.uint8)


def jitter(gt: dict[str, Any], rng: np.random.Generator, *, shift: int, max_radius: int,
           false_positives: int) -> list[dict[str, Any]]:
    """Detections made from ``gt``: each object kept with probability 0.9, its box shifted by up to
    ``shift`` pixels per side, its mask eroded or dilated by up to ``max_radius``, a random score;
    plus 0..``false_positives`` random boxes (filled masks) per image with low scores."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    results = []
    for image in gt["images"]:
        h, w = image["height"], image["width"]
        for ann in by_image.get(image["id"], []):
            if rng.random() < 0.1:
                continue  # a missed object
            x, y, bw, bh = ann["bbox"]
            dx0, dy0, dx1, dy1 = rng.integers(-shift, shift + 1, size=4)
            x0, y0 = np.clip(x + dx0, 0, w - 1), np.clip(y + dy0, 0, h - 1)
            x1, y1 = np.clip(x + bw + dx1, x0 + 1, w), np.clip(y + bh + dy1, y0 + 1, h)
            mask = morph(mask_utils.decode(ann["segmentation"]), int(rng.integers(-max_radius, max_radius + 1)))
            if not mask.any():
                mask = mask_utils.decode(ann["segmentation"])
            results.append({"image_id": image["id"], "category_id": ann["category_id"],
                            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                            "segmentation": encode(mask), "score": float(rng.uniform(0.3, 1.0))})
        for _ in range(int(rng.integers(0, false_positives + 1))):
            x0, y0 = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
            x1, y1 = int(rng.integers(x0 + 2, w + 1)), int(rng.integers(y0 + 2, h + 1))
            mask = np.zeros((h, w), np.uint8)
            mask[y0:y1, x0:x1] = 1
            results.append({"image_id": image["id"], "category_id": 1,
                            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                            "segmentation": encode(mask), "score": float(rng.uniform(0.05, 0.6))})
    return results


def penn_fudan(path: str, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth of Penn-Fudan's default 50-image test split and jittered detections for it."""
    full = open_dataset(DataConfig(path=path))
    split = make_split(full.all_files, 50, 0)
    test = build_dataset(DataConfig(path=path), files=split["test"], train=False)
    gt = dataset_ground_truth(test, list(full.classes))
    return gt, jitter(gt, np.random.default_rng(seed), shift=4, max_radius=3, false_positives=3)


def synthetic(n: int, seed: int, size: int = 64) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``n`` images of ``size``x``size`` with 1-5 random rectangles or ellipses (2 classes), and jittered detections."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, annotations = [], []
    for image_id in range(1, n + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": size, "width": size})
        for _ in range(int(rng.integers(1, 6))):
            cx, cy = rng.uniform(4, size - 4, size=2)
            rx, ry = rng.uniform(2, size / 4, size=2)
            if rng.random() < 0.5:
                mask = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
            else:
                mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            mask = mask.astype(np.uint8)
            box = mask_box(mask)
            if box is None:
                continue
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.integers(1, 3)), "bbox": box,
                                "area": float(mask.sum()), "iscrowd": 0, "segmentation": encode(mask)})
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": 1, "name": "rectangle-or-ellipse-a"}, {"id": 2, "name": "rectangle-or-ellipse-b"}]}
    return gt, jitter(gt, rng, shift=2, max_radius=1, false_positives=2)


def run_faster(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, list[float]]:
    """segtune's own scoring path (faster-coco-eval)."""
    out = score(gt, results, IOU_TYPES, print_fn=lambda line: None)
    return {t: [out[t][name] for name in STAT_NAMES] for t in IOU_TYPES}


def run_pycocotools(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The same steps with pycocotools (a dev dependency only)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        for iou_type in IOU_TYPES:
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
            evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            out[iou_type] = [float(v) for v in evaluator.stats[:12]]
    return out


def best_of(fn: Any, gt: dict[str, Any], results: list[dict[str, Any]], repeat: int) -> tuple[float, Any]:
    times, stats = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        stats = fn(gt, results)
        times.append(time.perf_counter() - start)
    return min(times), stats


def compare(name: str, gt: dict[str, Any], results: list[dict[str, Any]], repeat: int) -> dict[str, Any]:
    # Alternate the two libraries run by run so that machine drift falls on both alike.
    t_fast, t_py, fast, py = [], [], None, None
    for _ in range(repeat):
        t, fast = best_of(run_faster, gt, results, 1)
        t_fast.append(t)
        t, py = best_of(run_pycocotools, gt, results, 1)
        t_py.append(t)
    diff = max(abs(a - b) for t in IOU_TYPES for a, b in zip(fast[t], py[t]))
    row = {"set": name, "images": len(gt["images"]), "ground_truth": len(gt["annotations"]),
           "detections": len(results), "faster_coco_eval_s": min(t_fast), "pycocotools_s": min(t_py),
           "speedup": min(t_py) / min(t_fast), "max_abs_stat_diff": diff,
           "faster_coco_eval_stats": fast, "pycocotools_stats": py}
    print(f"{name}: faster-coco-eval {row['faster_coco_eval_s']:.3f} s, pycocotools {row['pycocotools_s']:.3f} s, "
          f"x{row['speedup']:.1f}; max |stat difference| {diff:.2e}; bbox AP {fast['bbox'][0]:.4f}, "
          f"segm AP {fast['segm'][0]:.4f}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--synthetic", type=int, default=5000, help="number of synthetic 64x64 images")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each library per set (the best counts)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    small = penn_fudan(args.data, args.seed)
    run_faster(*small), run_pycocotools(*small)  # untimed: imports, first-call set-up
    rows = [compare("Penn-Fudan test split", *small, args.repeat)]
    if args.synthetic:
        rows.append(compare(f"synthetic {args.synthetic} x 64x64", *synthetic(args.synthetic, args.seed),
                            args.repeat))
    result = {"faster_coco_eval": version("faster-coco-eval"), "pycocotools": version("pycocotools"),
              "iou_types": list(IOU_TYPES), "repeat": args.repeat, "rows": rows}
    OUT = write_result(NAME, result)
    print("\n| data | images | GT / detections | faster-coco-eval (s) | pycocotools (s) | speed-up | max stat diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['images']} | {r['ground_truth']} / {r['detections']} | "
              f"{r['faster_coco_eval_s']:.3f} | {r['pycocotools_s']:.3f} | x{r['speedup']:.1f} | "
              f"{r['max_abs_stat_diff']:.1e} |")
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
