"""Owns what a run keeps for its report, and writing ``report.html`` when training ends, as a hook.

Every optimiser step's loss terms and learning rate go to ``steps.csv`` (rewritten after each
epoch); the detections of the best epoch so far on the test split to ``test_detections.json``; the
machine and the times to ``run_info.json``. At the end :func:`segtune.report.write_run_report` reads
them back, the same way ``segtune report RUN`` does, with the data sets the run already has open. A
report that cannot be written is a warning, never a failed run: the weights and metrics are saved.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from segtune.engine.checkpoints import best_index
from segtune.engine.hooks import HOOKS, Hook, TrainerView
from segtune.errors import SegtuneError
from segtune.fileio import write_json, write_text
from segtune.report import OpenedData, read_steps, write_run_report
from segtune.run_files import RUN_INFO, STEPS_CSV, TEST_DETECTIONS
from segtune.machine import cpu_name
from segtune.version import __version__

logger = logging.getLogger("segtune.train")


def machine_facts(device: Any) -> dict[str, str]:
    """What the run ran on, for the report's summary."""
    facts = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu_name()})",
             "device": str(device), "software": f"segtune {__version__}, torch {torch.__version__}, "
                                                f"Python {platform.python_version()}"}
    if torch.device(device).type == "cuda":
        facts["device"] += f" ({torch.cuda.get_device_name(torch.device(device))})"
    return facts


@HOOKS.register("report")
class ReportHook(Hook):
    """``train.report``: keeps the per-step losses, the best epoch's test detections and the run's facts, and
    writes ``report.html`` after training (rank 0; training time is not charged for it)."""

    main_process_only = True
    name = "report"

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.started = time.time()

    def before_train(self, trainer: TrainerView) -> None:
        path = Path(trainer.run_dir) / STEPS_CSV
        if path.is_file():  # a resumed run: its earlier steps, up to where it resumes
            self.steps = [s for s in read_steps(path) if s["step"] <= trainer.step]
        self._write_info(trainer, finished=None)

    def after_step(self, trainer: TrainerView, step: int, losses: dict[str, float]) -> None:
        self.steps.append({"step": step, "epoch": trainer.epoch, "lr": trainer.optimizer.param_groups[0]["lr"],
                           **{k: round(float(v), 6) for k, v in losses.items()}})

    def after_epoch(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        run_dir = Path(trainer.run_dir)
        self._write_steps(run_dir)
        evaluation = trainer.hooks.get("evaluation")
        last = getattr(evaluation, "last", None)
        if last is not None and best_index(trainer.history, trainer.cfg.train.early_stop_metric) == \
                len(trainer.history) - 1:
            write_json(run_dir / TEST_DETECTIONS, {"epoch": record["epoch"], "iou_types": list(last.metrics),
                                                   "results": last.results})

    def after_train(self, trainer: TrainerView, result: Any) -> None:
        run_dir = Path(trainer.run_dir)
        self._write_info(trainer, finished=time.time())
        if not (run_dir / TEST_DETECTIONS).is_file():
            logger.info("report: not written (no epoch was evaluated)")
            return
        evaluation = trainer.hooks.get("evaluation")
        # The data sets and ground truth the run already holds: no annotation file is read again.
        opened = OpenedData(trainer.test_ds, trainer.train_ds, evaluation.gt)
        with trainer.clock.paused():
            try:
                write_run_report(run_dir, opened=opened)
            except (SegtuneError, OSError, ValueError) as e:
                logger.warning("report: not written (%s); `segtune report %s` tries again", e, run_dir)

    def _write_steps(self, run_dir: Path) -> None:
        if not self.steps:
            return
        columns: list[str] = []
        for row in self.steps:
            columns.extend(c for c in row if c not in columns)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.steps)
        write_text(run_dir / STEPS_CSV, buf.getvalue())

    def _write_info(self, trainer: TrainerView, finished: float | None) -> None:
        info: dict[str, Any] = machine_facts(trainer.device)
        info["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
        if finished is not None:
            info["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(finished))
            info["training time"] = f"{trainer.clock.elapsed / 60:.1f} min (evaluation not counted)"
        if trainer.dist.world_size > 1:
            info["processes"] = str(trainer.dist.world_size)
        write_json(Path(trainer.run_dir) / RUN_INFO, info)
