"""``segtune benchmark``: eager, bf16, TorchScript, ONNX Runtime and OpenVINO side by side on a run's test split."""

from __future__ import annotations

import argparse
from typing import Any

from segtune.export.benchmark import BENCHMARK_JSON, benchmark_run, default_paths, markdown


def add_parser(sub: Any) -> None:
    p = sub.add_parser("benchmark", help="every way to run a trained model: status, size, AP, ms per image",
                       description="Run a trained model every way segtune can (eager fp32, eager bf16 in channels-last "
                       "where the CPU has native bfloat16, TorchScript, ONNX Runtime, OpenVINO, with --int8 OpenVINO INT8 "
                       "behind its AP gate: exported and checked first) on the run's test split: status, file size, bbox and "
                       "segm AP, median ms per image at batch 1 and images per second, at evaluation settings (every detection the model keeps, masks "
                       "pasted at image size) and at prediction settings (score >= --score-threshold, dropped "
                       f"inside the model). Prints a Markdown table and writes RUN/{BENCHMARK_JSON}.")
    p.add_argument("run_dir", metavar="RUN", help="a run folder, or a checkpoint")
    p.add_argument("--images", type=int, default=20, help="test images timed per path (default: 20)")
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="prediction settings: time each path again keeping scores >= this (default: 0.5, predict's "
                   "default; the exported files are exported again with it); a negative value skips it")
    p.add_argument("--int8", action="store_true",
                   help="also the OpenVINO INT8 file of `segtune export --int8` (its defaults: calibrated on up to 300 "
                   "training images, kept only within 0.01 AP of the float file; minutes more)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    threshold = args.score_threshold if args.score_threshold >= 0 else None
    rows = benchmark_run(args.run_dir, images=args.images, predict_threshold=threshold,
                         paths=default_paths(int8=args.int8))
    print(markdown(rows, threshold))
    return 0
