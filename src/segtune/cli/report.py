"""``segtune report``: rebuild a run's report.html from its folder."""

from __future__ import annotations

import argparse
from typing import Any

from segtune.report import write_run_report


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="rebuild a run's report.html (curves, PR/F1, confusion matrix, gallery)",
                       description="Write the report of a training run from its folder: training curves, "
                       "precision-recall and F1 curves, the confusion matrix, label statistics, a gallery of "
                       "the test images worst first and COCO error analysis, in one self-contained HTML file. "
                       "It uses the best epoch's saved detections: no model is run.")
    p.add_argument("run_dir", metavar="RUN", help="a run folder (as segtune train makes)")
    p.add_argument("--out", help="where to write the page (default: RUN/report.html)")
    p.add_argument("--data", help="the data set folder, if it moved since training")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = write_run_report(args.run_dir, args.out, data=args.data)
    print(f"report: {path}")
    return 0
