"""Owns the evaluation after every epoch: COCO metrics of the model on the test split, as a hook."""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from segtune.engine import distributed as dist
from segtune.engine.hooks import HOOKS, Hook, TrainerView
from segtune.evaluation import EvalReport, dataset_ground_truth, evaluate_model


@HOOKS.register("evaluation")
class EvaluationHook(Hook):
    """Scores the model on the test split after each epoch (and the part-epoch a time limit ends).

    The test split's COCO ground truth is built once, in ``before_train``, from the opened data set's
    annotations. Adds ``metrics``, ``per_class``, ``eval_time_s`` and ``detections`` to the epoch's
    record. With several processes each scores a shard and the results are gathered.
    :meth:`score` evaluates any other model the same way (the EMA hook's average).
    """

    name = "evaluation"

    last: EvalReport | None = None

    def before_train(self, trainer: TrainerView) -> None:
        self.gt = dataset_ground_truth(trainer.test_ds, trainer.run.classes)

    def score(self, trainer: TrainerView, model: nn.Module) -> EvalReport:
        """COCO metrics of ``model`` on the test split, against the ground truth built once."""
        cfg = trainer.cfg
        dist.broadcast_buffers(model)  # every rank scores the model rank 0 saves
        return evaluate_model(
            model, trainer.test_ds, trainer.run.classes, device=trainer.device, batch_size=cfg.eval.batch_size,
            workers=trainer.workers, mask_threshold=cfg.eval.mask_threshold, gt=self.gt,
            shard=(trainer.dist.rank, trainer.dist.world_size), gather=dist.all_gather_objects)

    def evaluate(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        start = time.perf_counter()
        report = self.score(trainer, trainer.model)
        record.update(metrics=report.metrics, per_class=report.per_class, eval_time_s=time.perf_counter() - start,
                      detections=report.num_detections)
        self.last = report  # its detections, for the report of the best epoch
