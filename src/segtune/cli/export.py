"""``segtune export``: a checkpoint's model as a file of a registered runtime (ONNX, TorchScript, OpenVINO, ...) with a
sidecar JSON, checked."""

from __future__ import annotations

import argparse
from typing import Any

from segtune.export import export_model
from segtune.export.exporter import DEFAULT_OPSET
from segtune.runtimes import RUNTIMES, export_formats


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="write the model as ONNX, TorchScript or OpenVINO IR, checked against the "
                       "checkpoint",
                       description="Export a checkpoint's model to a file that takes one RGB image (float32 "
                       "[3, H, W] in 0..1, any size) and returns boxes, labels, scores and masks pasted to the "
                       "image, with a sidecar JSON (class names, category ids, thresholds, input sizes). The file "
                       "is loaded back and run beside the checkpoint's model on a sample image. segtune predict "
                       "and evaluate take the file in place of the checkpoint.")
    p.add_argument("checkpoint", help="a .pt checkpoint, or a run folder (uses weights/best.pt)")
    formats = export_formats()
    p.add_argument("--format", choices=formats, default="onnx",
                   help=" or ".join(f"{name} ({RUNTIMES.get(name).description})" for name in formats))
    p.add_argument("--out", help="the file to write (default: beside the checkpoint, e.g. weights/best.onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    p.add_argument("--exporter", choices=["auto", "dynamo", "legacy"], default="auto",
                   help="ONNX: auto (the dynamo exporter, else the TorchScript-based one; torchvision's detectors "
                   "go straight to the latter), dynamo, or legacy (TorchScript-based only)")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="the file drops detections scoring below this itself, before computing their masks: "
                   "faster prediction (e.g. 0.5, predict's default), but COCO evaluation of the file then sees "
                   "only those (default: the model's own, 0.05)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = export_model(args.checkpoint, args.format, out=args.out, opset=args.opset, exporter=args.exporter,
                          score_threshold=args.score_threshold)
    parity = result.parity
    print(f"exported {result.path} ({result.format}, {result.exporter} exporter, {result.size_mb:.1f} MB, "
          f"{result.seconds:.1f} s); sidecar {result.sidecar}")
    for note in result.notes:
        print(f"note: {note}")
    verdict = "parity passed" if parity.ok else "PARITY FAILED: " + "; ".join(parity.problems)
    print(f"check on a sample image: {parity.matched} of {parity.reference} detections matched, boxes within "
          f"{parity.max_box_px:.3g} px, scores within {parity.max_score:.2g}, mask IoU >= {parity.min_mask_iou:.3f}: "
          f"{verdict}")
    return 0 if parity.ok else 1
