"""The run report: one self-contained ``report.html`` with curves, PR/F1, the confusion matrix, label
statistics, a worst-first gallery and COCO error analysis. Uses ``segtune.data`` and ``segtune.evaluation``
(never the training engine, which calls it at the end of a run)."""

from segtune.report.build import ReportInputs, build_html, write_report
from segtune.report.run import OpenedData, read_steps, run_inputs, write_checkpoint_report, write_run_report

__all__ = ["OpenedData", "ReportInputs", "build_html", "read_steps", "run_inputs", "write_checkpoint_report", "write_report", "write_run_report"]
