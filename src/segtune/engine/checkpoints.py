"""Owns when a run's checkpoints are written, and which epoch is the best.

Files in ``run_dir/weights/`` (names in :mod:`segtune.run_files`): ``last.pt`` after every epoch and at
an interruption (with the optimiser, schedule, scaler, RNG, history and hook states: everything
resuming needs), ``best.pt`` for the best epoch (see :func:`best_index`) and ``epoch-N.pt`` for the
last ``train.keep_last`` epochs, written by :class:`CheckpointHook`; ``ema.pt`` by the EMA hook. What
each holds is :class:`~segtune.engine.state.TrainingState`'s; every file is written atomically by
:func:`segtune.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import logging
from typing import Any

from segtune.checkpoint import save_checkpoint
from segtune.engine.hooks import HOOKS, Hook, TrainerView, select_metric
from segtune.engine.state import TrainingState
from segtune.run_files import best_checkpoint, epoch_checkpoints, epoch_file, last_checkpoint, weights_dir

logger = logging.getLogger("segtune.train")


def best_index(history: list[dict[str, Any]], metric: str = "auto") -> int:
    """The epoch record ``best.pt`` holds: highest ``metric``; on a tie, higher bbox AP, then the later epoch.

    Differences below 1e-4 AP count as ties: they are noise, and early in a run from scratch segm
    AP is 0.0000x for every epoch while bbox AP already moves.
    """
    def key(i: int) -> tuple[float, float, int]:
        metrics = history[i]["metrics"]
        return round(select_metric(metrics, metric)[1], 4), round(metrics["bbox"]["AP"], 4), i

    return max(range(len(history)), key=key)


@HOOKS.register("checkpoints")
class CheckpointHook(Hook):
    """Writes the run's checkpoints (rank 0): after every epoch, and where training is interrupted."""

    main_process_only = True
    name = "checkpoints"

    def after_epoch(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        """``last.pt``, ``epoch-N.pt`` and, if the epoch is the best, ``best.pt``."""
        state = TrainingState(trainer)
        metrics = record["metrics"]
        # last.pt also holds the optimiser, schedule and RNG states (to go on training); best.pt is for use.
        save_checkpoint(last_checkpoint(trainer.run_dir), {**state.state_dict(0), "metrics": metrics})
        for_use = {**state.checkpoint(), "metrics": metrics}
        keep = trainer.cfg.train.keep_last
        if keep > 0:
            save_checkpoint(weights_dir(trainer.run_dir) / epoch_file(record["epoch"]), for_use)
            for old in epoch_checkpoints(trainer.run_dir)[:-keep]:
                old.unlink()
        if best_index(trainer.history, trainer.cfg.train.early_stop_metric) == len(trainer.history) - 1:
            save_checkpoint(best_checkpoint(trainer.run_dir), for_use)

    def on_interrupt(self, trainer: TrainerView, epoch: int, iteration: int) -> None:
        """``last.pt`` at batch ``iteration`` of the current epoch: the exact state to resume from."""
        save_checkpoint(last_checkpoint(trainer.run_dir), TrainingState(trainer).state_dict(iteration))
