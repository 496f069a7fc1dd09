"""Owns a run's data: the training set opened and checked once, an optional validation set of its own,
and the split between them."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from segtune.data import DetectionDataset, ProblemSink, check_opened, open_dataset, raise_on_errors
from segtune.data.check import CheckReport
from segtune.data.split import choose_split
from segtune.engine import distributed as dist
from segtune.errors import DatasetError

logger = logging.getLogger("segtune.train")


@dataclass
class RunData:
    """The data sets of a run, each opened once with every annotation, and the data doctor's reports.

    Attributes:
        full: the training data (``--data``); its train split trains, or all of it with ``val``.
        val: the validation set (``--val-data``), evaluated every epoch; None: a split of ``full`` is.
        report, val_report: the data doctor's reports of ``full`` and ``val``.
    """

    full: DetectionDataset
    val: DetectionDataset | None
    report: CheckReport
    val_report: CheckReport | None

    @property
    def evaluated(self) -> DetectionDataset:
        """The data set the test split's names belong to."""
        return self.val if self.val is not None else self.full

    def split(self, data_cfg: Any, resume: dict[str, Any] | None) -> dict[str, Any]:
        """The resumed run's split, all of ``full`` / all of ``val`` with a validation set, else
        :func:`segtune.data.split.choose_split` (the data set's own, or a random one)."""
        if resume is not None:
            return resume["split"]
        if self.val is not None:
            return {"train": list(self.full.all_files), "test": list(self.val.all_files),
                    "source": f"--val-data {data_cfg.val_path} is evaluated; all of --data trains"}
        return choose_split(self.full, data_cfg)

    @property
    def test_instance_counts(self) -> dict[str, int]:
        return (self.val_report or self.report).instance_counts


def open_run_data(data_cfg: Any, *, given: DetectionDataset | None = None, main: bool = True,
                  world_size: int = 1) -> RunData:
    """Open (or take) the training set and ``data_cfg.val_path``'s validation set, and check both.

    Rank 0 checks; under torch.distributed the other processes take its verdict. Errors stop here,
    before anything is written; the first warnings are logged.

    Raises:
        DatasetError: a data set cannot be read, the data doctor found errors, or the validation set
            names other classes than the training set.
    """
    full = given if given is not None else open_dataset(data_cfg, keep_crowd=True, sink=ProblemSink(collect=True))
    # The validation set is kept (its test split is evaluated every epoch); the test set is only checked
    # here, so a bad one stops the run before it starts, and is read again after training.
    others = [(role, dataclasses.replace(data_cfg, path=path)) for role, path in
              (("validation", data_cfg.val_path), ("test", data_cfg.test_path)) if path]
    sets = [full] + [open_dataset(cfg, keep_crowd=True, sink=ProblemSink(collect=True)) for _, cfg in others]
    cfgs = [data_cfg] + [cfg for _, cfg in others]
    reports = [check_opened(ds, cfg, progress=True) for ds, cfg in zip(sets, cfgs)] if main else None
    if world_size > 1:
        reports = dist.broadcast_object(reports)
        for dataset in sets:
            dataset.sink = ProblemSink()
    assert reports is not None
    for report, cfg in zip(reports, cfgs):
        raise_on_errors(report)
        if main:
            for problem in report.warnings[:10]:
                logger.warning("%s", problem)
            if len(report.warnings) > 10:
                logger.warning("... and %d more warnings (segtune data check %s lists them all)",
                               len(report.warnings) - 10, cfg.path)
    for (role, cfg), dataset in zip(others, sets[1:]):
        if list(dataset.classes) != list(full.classes):
            raise DatasetError(f"{cfg.path}: the {role} set's classes {list(dataset.classes)} are not the training "
                               f"set's {list(full.classes)} (same names, same order); for mask folders, name them "
                               "with --classes")
    val = sets[1] if data_cfg.val_path else None
    return RunData(full, val, reports[0], reports[1] if val is not None else None)
