"""``segtune benchmark``: eager, bf16, TorchScript and ONNX Runtime side by side on a run's test split."""

from __future__ import annotations

import argparse
from typing import Any

from segtune.export.benchmark import BENCHMARK_JSON, benchmark_run, markdown


def add_parser(sub: Any) -> None:
    p = sub.add_parser("benchmark", help="every way to run a trained model: status, size, AP, ms per image",
                       description="Run a trained model every way segtune can (eager fp32, eager bf16 where the "
                       "CPU has native bfloat16, TorchScript, ONNX Runtime: exported and checked first) on the "
                       "run's test split: status, file size, bbox and segm AP, median ms per image at batch 1 "
                       f"and images per second. Prints a Markdown table and writes RUN/{BENCHMARK_JSON}.")
    p.add_argument("run_dir", metavar="RUN", help="a run folder, or a checkpoint")
    p.add_argument("--images", type=int, default=20, help="test images timed per path (default: 20)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(markdown(benchmark_run(args.run_dir, images=args.images)))
    return 0
