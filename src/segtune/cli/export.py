"""``segtune export``: a checkpoint's model as a file of a registered runtime (ONNX, TorchScript, OpenVINO, ...) with a
sidecar JSON, checked."""

from __future__ import annotations

import argparse
from typing import Any

from segtune.errors import ConfigError
from segtune.export import export_model
from segtune.export.exporter import DEFAULT_OPSET
from segtune.export.int8 import DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_AP_DROP, Int8Request
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
    q = p.add_argument_group("INT8 (--format openvino)")
    q.add_argument("--int8", action="store_true",
                   help="quantise the backbone and FPN to INT8 (NNCF post-training quantisation), calibrated on the "
                   "run's training images; the file is kept only if its bbox and segm AP on the run's test split stay "
                   "within --max-ap-drop of the float file's (both measured, written in the sidecar)")
    q.add_argument("--max-ap-drop", type=float,
                   help=f"the largest AP drop --int8 accepts, bbox and segm each (default: {DEFAULT_MAX_AP_DROP})")
    q.add_argument("--calibration-images", type=int,
                   help="at most this many training images, evenly spread, calibrate --int8 (default: "
                   f"{DEFAULT_CALIBRATION_IMAGES})")
    q.add_argument("--data", help="--int8: the data set folder, if it moved since training (default: the run's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    int8_only = {"--max-ap-drop": args.max_ap_drop, "--calibration-images": args.calibration_images,
                 "--data": args.data}
    given = [flag for flag, value in int8_only.items() if value is not None]
    if given and not args.int8:
        raise ConfigError(f"{', '.join(given)}: only with --int8")
    int8 = None
    if args.int8:
        int8 = Int8Request(
            max_ap_drop=DEFAULT_MAX_AP_DROP if args.max_ap_drop is None else args.max_ap_drop,
            calibration_images=(DEFAULT_CALIBRATION_IMAGES if args.calibration_images is None
                                else args.calibration_images),
            data=args.data)
    result = export_model(args.checkpoint, args.format, out=args.out, opset=args.opset, exporter=args.exporter,
                          score_threshold=args.score_threshold, int8=int8)
    parity = result.parity
    print(f"exported {result.path} ({result.format}, {result.exporter} exporter, {result.size_mb:.1f} MB, "
          f"{result.seconds:.1f} s); sidecar {result.sidecar}")
    for note in result.notes:
        print(f"note: {note}")
    verdict = "parity passed" if parity.ok else "PARITY FAILED: " + "; ".join(parity.problems)
    print(f"check on a sample image: {parity.matched} of {parity.reference} detections matched, boxes within "
          f"{parity.max_box_px:.3g} px, scores within {parity.max_score:.2g}, mask IoU >= {parity.min_mask_iou:.3f}: "
          f"{verdict}")
    if result.int8 is not None:
        gate = result.int8
        for worse in gate.tried:
            print(f"int8: tried {worse.summary()}: more than --max-ap-drop {gate.max_ap_drop:g}")
        print(f"int8: {gate.summary()} on {gate.test_images} test images (calibrated on {gate.calibration_images} "
              f"training images): within --max-ap-drop {gate.max_ap_drop:g}, kept; {gate.kept_in_float}")
    return 0 if parity.ok else 1
