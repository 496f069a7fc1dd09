"""Owns the run folder: its name, its log file, the metrics files written after every epoch, and what a run returns."""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segtune.engine.checkpoints import best_index
from segtune.engine.hooks import HOOKS, Hook, TrainerView
from segtune.fileio import check_folder, make_folder, write_json, write_text
from segtune.run_files import (CONFIG_FILE, LOG_FILE, METRICS_CSV, METRICS_JSON, RUN_STATE_FILE,  # noqa: F401
                               SPLIT_FILE, weights_dir)

logger = logging.getLogger("segtune.train")


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the best and last evaluation, every epoch's record."""

    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, dict[str, float]]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_metrics(self) -> dict[str, dict[str, float]]:
        return self.history[-1]["metrics"] if self.history else {}


def new_run_dir(out: str | os.PathLike) -> Path:
    """``out`` itself if it is new or empty, else the first free ``out-2``, ``out-3``, ... (never overwrite a run)."""
    base = Path(out)
    make_folder(base.parent, what="folder of the run (--out)")
    candidate, n = base, 1
    check_folder(base, what="run folder (--out)")
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    make_folder(weights_dir(candidate), what="run folder (--out)")
    return candidate


class HeldLines(logging.Handler):
    """What segtune logs while a run is set up, before its folder exists (the data check's summary, the
    number formats, the settings fitted to the data), kept to start its ``train.log`` with; at most
    ``limit`` lines (a data set with thousands of warnings keeps its first ones)."""

    def __init__(self, limit: int = 2000) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.limit = limit

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.limit:
            self.records.append(record)


def hold_setup_lines() -> HeldLines:
    held = HeldLines()
    logging.getLogger("segtune").addHandler(held)
    return held


def release_setup_lines(held: HeldLines) -> None:
    logging.getLogger("segtune").removeHandler(held)


def attach_log_file(run_dir: Path, held: HeldLines | None = None) -> logging.Handler:
    """Log to ``run_dir/train.log`` from now on, starting with the ``held`` lines of the set-up."""
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    if held is not None:
        release_setup_lines(held)
        for record in held.records:
            handler.handle(record)
    logging.getLogger("segtune").addHandler(handler)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    logging.getLogger("segtune").removeHandler(handler)
    handler.close()


def flat_row(record: dict[str, Any]) -> dict[str, Any]:
    """One epoch's record as a flat CSV row: ``train/loss``, ``bbox/AP``, ``segm/AP50``, ..."""
    row: dict[str, Any] = {"epoch": record["epoch"], "lr": record["lr"]}
    row.update({f"train/{k}": v for k, v in record["train"].items()})
    row.update({f"val/{k}": v for k, v in record.get("val", {}).items()})
    for iou_type, stats in record["metrics"].items():
        row.update({f"{iou_type}/{k}": v for k, v in stats.items()})
    per_class = record.get("per_class", {})
    if any(len(aps) > 1 for aps in per_class.values()):
        for iou_type, aps in per_class.items():
            row.update({f"{iou_type}/AP/{name}": v for name, v in aps.items()})
    if "eval_time_s" in record:
        row["eval_time_s"] = record["eval_time_s"]
    return row


def write_run_state(run_dir: Path, state: Any) -> None:
    """Rewrite ``run.json``: the :class:`~segtune.checkpoint.RunState` (what the run learned), atomically."""
    write_json(run_dir / RUN_STATE_FILE, state.to_dict())


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.json`` (nested) and ``metrics.csv`` (one row per epoch), each atomically."""
    write_json(run_dir / METRICS_JSON, history)
    rows = [flat_row(r) for r in history]
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(run_dir / METRICS_CSV, buf.getvalue())


@HOOKS.register("metrics_files")
class MetricsFilesHook(Hook):
    """After every epoch (rank 0): ``metrics.json``, ``metrics.csv`` and ``run.json`` rewritten, and
    the epoch's line in the log (its AP and the best epoch so far)."""

    main_process_only = True
    name = "metrics_files"

    def after_epoch(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        write_metrics(trainer.run_dir, trainer.history)
        write_run_state(trainer.run_dir, trainer.run)
        best = best_index(trainer.history, trainer.cfg.train.early_stop_metric)
        logger.info("epoch %d: %s  (best epoch %d)", record["epoch"],
                    "  ".join(f"{k} AP {m['AP']:.4f}" for k, m in record["metrics"].items()),
                    trainer.history[best]["epoch"])
