"""Owns scoring a held-out test set of the user's own (``--test-data``) once training has ended, as a hook."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from segtune.engine.hooks import HOOKS, Hook, TrainerView
from segtune.evaluation import evaluate_checkpoint
from segtune.fileio import write_json
from segtune.run_files import TEST_METRICS_FILE, best_checkpoint

if TYPE_CHECKING:
    from segtune.engine.run import TrainResult

logger = logging.getLogger("segtune.train")


@HOOKS.register("test_set")
class TestSetHook(Hook):
    """After training, the best checkpoint scored on ``data.test_path`` (every image of it): logged, and
    written to ``test_metrics.json``. The validation set (or split) chose the best epoch; the test set
    is seen only here, once."""

    main_process_only = True
    name = "test_set"

    @classmethod
    def from_trainer(cls, trainer: TrainerView) -> TestSetHook:
        return cls(trainer.cfg.data.test_path)

    def __init__(self, path: str) -> None:
        self.path = path

    def after_train(self, trainer: TrainerView, result: TrainResult) -> None:
        best = best_checkpoint(trainer.run_dir)
        if not best.is_file():  # no epoch finished
            return
        with trainer.clock.paused():
            report = evaluate_checkpoint(best, data=self.path, split="all", device=str(trainer.device),
                                         workers=trainer.workers, amp="none")  # float32: the reference figures
        write_json(Path(trainer.run_dir) / TEST_METRICS_FILE,
                   {"data": self.path, "checkpoint": str(best), "num_images": report.num_images,
                    "metrics": report.metrics})
        logger.info("test set %s (%d images), best epoch %d: %s", self.path, report.num_images, result.best_epoch,
                    "  ".join(f"{k} AP {m['AP']:.4f}" for k, m in report.metrics.items()))
