"""One trained model's AP under the two box conventions of mask-derived ground truth, side by side.

One command:  .venv/bin/python benchmarks/box_convention.py RUN_OR_CHECKPOINT [--data PATH]

segtune's ground-truth boxes are the pixel extent of each mask (a mask over columns 2..9 has
x1 = 2, x2 = 10: COCO's ``toBbox``, see ``segtune.data.boxes``). Until 2026-12-01 they were
torchvision's ``masks_to_boxes`` (x2 = 9, the last pixel's index), as the torchvision tutorial's
Penn-Fudan data set builds them; figures measured then, and the tutorial's, used that convention.
This scores the same detections of one checkpoint on its test split against both, so a reader can
compare a segtune figure with one made the tutorial's way. segm AP does not depend on boxes and is
the same both ways. Writes benchmarks/results/box_convention.json.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from common import write_result
from segtune.checkpoint import checkpoint_data, load_checkpoint
from segtune.data import build_dataset
from segtune.evaluation import dataset_ground_truth, evaluate_model
from segtune.models import model_from_checkpoint
from segtune.machine import resolve_device


def last_pixel_boxes(gt: dict[str, Any]) -> dict[str, Any]:
    """``gt`` with every box one pixel narrower and shorter: torchvision's ``masks_to_boxes`` convention."""
    old = copy.deepcopy(gt)
    for ann in old["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["bbox"] = [x, y, max(w - 1, 0.0), max(h - 1, 0.0)]
    return old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a run folder (its weights/best.pt) or a .pt file")
    parser.add_argument("--data", help="the data set, if it moved since training")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    model, cfg = model_from_checkpoint(ckpt)
    device = resolve_device("cpu")
    test = build_dataset(checkpoint_data(ckpt, args.data), files=ckpt.get("split", {}).get("test"), train=False)
    classes = list(ckpt["classes"])
    gt = dataset_ground_truth(test, classes)
    rows = {}
    for name, truth in (("pixel extent (segtune)", gt), ("last pixel index (torchvision masks_to_boxes)",
                                                          last_pixel_boxes(gt))):
        report = evaluate_model(model.to(device), test, classes, device=device, gt=truth,
                                mask_threshold=cfg.eval.mask_threshold)
        rows[name] = {t: {k: report.metrics[t][k] for k in ("AP", "AP50", "AP75")} for t in report.metrics}
    print(f"{ckpt['path']}: {len(test)} test images")
    print(f"{'ground-truth boxes':48} {'bbox AP':>8} {'AP50':>6} {'AP75':>6} {'segm AP':>8}")
    for name, m in rows.items():
        segm = m.get("segm", {}).get("AP", float("nan"))
        print(f"{name:48} {m['bbox']['AP']:8.3f} {m['bbox']['AP50']:6.3f} {m['bbox']['AP75']:6.3f} {segm:8.3f}")
    path = write_result("box_convention.json", {"checkpoint": str(ckpt["path"]), "test_images": len(test),
                                                "metrics": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
