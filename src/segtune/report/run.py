"""Owns reading a run folder back into :class:`ReportInputs`: what ``segtune report RUN`` and the end of
every training run turn into ``report.html``; and the report of a checkpoint on any data set
(``segtune evaluate --report``).

A run folder holds what the report needs besides the data: ``config.yaml``, ``run.json``,
``split.json``, ``metrics.json``, ``steps.csv``, ``run_info.json`` and ``test_detections.json`` (the
best epoch's detections on the test split, so the report needs no model and no inference).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from segtune.checkpoint import RunState
from segtune.config import build_config, flatten, load_yaml
from segtune.data import build_dataset
from segtune.data.split import load_split
from segtune.errors import ConfigError
from segtune.evaluation import dataset_ground_truth
from segtune.report.build import ReportInputs, write_report
from segtune.run_files import (CONFIG_FILE, METRICS_JSON, REPORT_HTML, RUN_INFO, RUN_STATE_FILE, SPLIT_FILE,
                               STEPS_CSV, TEST_DETECTIONS)

logger = logging.getLogger(__name__)


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; a run folder holds the {what}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The rows of ``steps.csv`` as numbers (none when the file is missing: a run from before it)."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return [{k: (int(v) if k in ("step", "epoch") else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


@dataclasses.dataclass
class OpenedData:
    """The run's data sets as the trainer holds them: the report then reads no annotation file again."""

    test_dataset: Any
    train_dataset: Any
    gt: dict[str, Any]


def run_inputs(run_dir: str | os.PathLike, *, data: str | None = None, opened: OpenedData | None = None) -> ReportInputs:
    """The report inputs of the run in ``run_dir``; ``data`` when its data set has moved since.

    The data sets are opened from the run's config and split, unless the caller has them (``opened``:
    the end of a training run).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a run folder")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir}: holds no {CONFIG_FILE}; is it a segtune run folder?")
    cfg = build_config((str(run_dir / CONFIG_FILE), flatten(load_yaml(run_dir / CONFIG_FILE))))
    known = {f.name for f in dataclasses.fields(RunState)}
    state = RunState(**{k: v for k, v in _json(run_dir / RUN_STATE_FILE, "run state").items() if k in known})
    split = load_split(run_dir / SPLIT_FILE)
    history = _json(run_dir / METRICS_JSON, "metrics of each epoch")
    detections = _json(run_dir / TEST_DETECTIONS, "best epoch's detections (written after the first epoch)")
    info = _json(run_dir / RUN_INFO, "machine and times") if (run_dir / RUN_INFO).is_file() else {}
    if opened is None:
        test_path = data or state.val_path or state.data_path
        test_ds = build_dataset(dataclasses.replace(cfg.data, path=test_path), files=split["test"], train=False)
        train_ds = build_dataset(dataclasses.replace(cfg.data, path=data or state.data_path), files=split["train"],
                                 train=False)
        opened = OpenedData(test_ds, train_ds, dataset_ground_truth(test_ds, list(state.classes)))
    facts: list[tuple[str, Any]] = [
        ("run folder", str(run_dir)), ("model", cfg.model.name),
        ("data set", f"{state.data_path} ({state.data_format} format)"),
        ("classes", f"{len(state.classes)}: {', '.join(state.classes[:20])}{' ...' if len(state.classes) > 20 else ''}"),
        ("split", f"{len(split['train'])} train, {len(split['test'])} test images; {split.get('source', 'as saved')}"),
    ]
    if state.val_path:
        facts.append(("validation set", state.val_path))
    facts += [(k.replace("_", " "), v) for k, v in info.items()]
    facts.append(("epochs run", f"{len(history)} of {state.epochs}"))
    return ReportInputs(
        title=f"segtune run {run_dir.name}", classes=list(state.classes), test_dataset=opened.test_dataset,
        gt=opened.gt, results=detections["results"],
        iou_types=list(detections["iou_types"]), train_dataset=opened.train_dataset, history=history,
        steps=read_steps(run_dir / STEPS_CSV), best_epoch=detections.get("epoch"), facts=facts,
        config_text=(run_dir / CONFIG_FILE).read_text(encoding="utf-8"))


def write_run_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                     data: str | None = None, opened: OpenedData | None = None) -> Path:
    """Write the report of the run in ``run_dir`` (default ``RUN/report.html``); returns its path."""
    start = time.perf_counter()
    path = write_report(run_inputs(run_dir, data=data, opened=opened), out or Path(run_dir) / REPORT_HTML)
    logger.info("report: %s (%.1f s)", path, time.perf_counter() - start)
    return path


def write_checkpoint_report(report: Any, *, title: str, out: str | os.PathLike,
                            facts: list[tuple[str, Any]] | None = None) -> Path:
    """The quality, labels and gallery sections for an evaluation (``segtune evaluate --report``).

    ``report`` is an :class:`~segtune.evaluation.EvalReport`: its data set, ground truth and detections.
    """
    start = time.perf_counter()
    iou_types = [t for t in report.metrics if t in ("bbox", "segm")]
    classes = [c["name"] for c in report.gt["categories"]]
    inputs = ReportInputs(title=title, classes=classes, test_dataset=report.dataset, gt=report.gt,
                          results=report.results, iou_types=iou_types, facts=list(facts or []))
    path = write_report(inputs, out)
    logger.info("report: %s (%.1f s)", path, time.perf_counter() - start)
    return path
