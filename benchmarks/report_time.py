"""Seconds to write a run's report.html, and its size: what the report adds to the end of a training run.

The report reads the run folder back and draws the test images (no model is run), so the figure is
the whole cost. Run it on the main job's run (``bash scripts/main.sh``: the 50-image Penn-Fudan test
split); each write is timed separately, in this one process, after a first write that loads the libraries.
Writes benchmarks/results/report_time.json.

    .venv/bin/python benchmarks/report_time.py runs/pennfudan-YYYYMMDD-HHMMSS [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from common import machine, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from segtune.report import run_inputs, write_run_report

    out = Path(tempfile.mkdtemp(prefix="segtune-report-")) / "report.html"
    start = time.perf_counter()
    write_run_report(args.run, out)
    first = time.perf_counter() - start
    print(f"first write (libraries loaded on the way): {first:.1f} s")
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        write_run_report(args.run, out)
        times.append(time.perf_counter() - start)
    inputs = run_inputs(args.run)
    print(f"report of {args.run}: {len(inputs.test_dataset)} test images, {len(inputs.results)} detections; "
          f"written in {statistics.median(times):.1f} s (median of {args.repeat}: "
          f"{', '.join(f'{t:.1f}' for t in times)}), {out.stat().st_size / 2**20:.1f} MB")
    print(f"machine: {machine()}; goal: under 30 s for the 50-image Penn-Fudan test split on 2 cores")
    path = write_result("report_time.json", {
        "run": str(args.run), "test_images": len(inputs.test_dataset), "detections": len(inputs.results),
        "first_write_s": round(first, 2), "seconds": [round(t, 2) for t in times],
        "median_s": round(statistics.median(times), 2), "size_mb": round(out.stat().st_size / 2**20, 2),
        "goal_s": 30})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
