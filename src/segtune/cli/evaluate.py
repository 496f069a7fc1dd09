"""``segtune evaluate``: COCO bbox + segm AP of a checkpoint on its run's test split."""

from __future__ import annotations

import argparse
from typing import Any

from segtune.cli.options import add_amp_argument
from segtune.evaluation import evaluate_checkpoint
from segtune.fileio import write_json


def add_parser(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="COCO AP of a checkpoint (bbox, and segm / keypoints)",
                       description="Evaluate a checkpoint (or an exported model) on the test split saved with its run.")
    p.add_argument("checkpoint", help="a .pt checkpoint, a run folder (uses weights/best.pt), or a file "
                   "written by segtune export (.onnx, .torchscript, .xml: OpenVINO IR)")
    p.add_argument("--data", help="data set folder, if not the one the checkpoint was trained on")
    p.add_argument("--split", choices=["test", "train", "all"], default="test", help="which images (default: test)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    add_amp_argument(p)
    p.add_argument("--batch-size", type=int, help="images per batch (default: the run's eval batch size)")
    p.add_argument("--workers", type=int, help="data-loader workers (default: 0 on CPU, 4 on GPU)")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.add_argument("--report", metavar="HTML", help="also write a report page: PR and F1 curves, confusion matrix, "
                   "label statistics, a worst-first gallery and COCO error analysis")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, device=args.device,
                                 batch_size=args.batch_size, workers=args.workers, amp=args.amp)
    if args.out:
        write_json(args.out, {"split": args.split, "num_images": report.num_images, "metrics": report.metrics})
    if args.report:
        from segtune.report import write_checkpoint_report

        write_checkpoint_report(report, title=f"segtune evaluation of {args.checkpoint}", out=args.report,
                                facts=[("checkpoint", args.checkpoint), ("data", args.data or "as trained"),
                                       ("split", f"{args.split}: {report.num_images} images")])
    parts = [f"{t} AP {m['AP']:.3f} (AP50 {m['AP50']:.3f})" for t, m in report.metrics.items()]
    print(f"{report.num_images} {args.split} images, {report.num_detections} detections: " + ", ".join(parts))
    return 0
