"""Owns what a run's checkpoints hold and when each is written, and which epoch is the best.

Files in ``run_dir/weights/``: ``last.pt`` after every epoch and at an interruption (with the
optimiser, schedule, scaler, RNG, history and hook states: everything resuming needs), ``best.pt``
for the best epoch (see :func:`best_index`) and ``epoch-N.pt`` for the last ``train.keep_last``
epochs, written by :class:`CheckpointHook`; ``ema.pt`` by the EMA hook. Every file is written
atomically by :func:`segtune.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from segtune.checkpoint import save_checkpoint
from segtune.engine.hooks import HOOKS, Hook, select_metric
from segtune.engine.state import capture_rng

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


def checkpoint_state(trainer: Any) -> dict[str, Any]:
    """What every checkpoint holds: the model and what rebuilds and labels it."""
    t = trainer
    return {"model": t.model.state_dict(), "epoch": t.epoch, "step": t.step,
            "classes": list(t.run.classes), "category_ids": list(t.run.category_ids),
            "config": t.cfg.to_dict(), "run": t.run.to_dict(), "split": t.split, **t.keypoints}


def training_state(trainer: Any, iteration: int) -> dict[str, Any]:
    """:func:`checkpoint_state` plus what resuming at batch ``iteration`` of the current epoch needs,
    the named hooks' states included (``hooks``: e.g. the EMA's average)."""
    t = trainer
    return {**checkpoint_state(t), "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
            "scaler": t.scaler.state_dict(), "iteration": iteration, "rng": capture_rng(),
            "train_time_s": t.clock.elapsed, "history": t.history, "hooks": t.hooks.state_dict()}


@HOOKS.register("checkpoints")
class CheckpointHook(Hook):
    """Writes the run's checkpoints (rank 0): after every epoch, and where training is interrupted."""

    main_process_only = True
    name = "checkpoints"

    def after_epoch(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        """``last.pt``, ``epoch-N.pt`` and, if the epoch is the best, ``best.pt``."""
        t = trainer
        weights = Path(t.run_dir) / "weights"
        state = {**checkpoint_state(t), "metrics": record["metrics"]}
        # last.pt also holds the optimiser, schedule and RNG states (to go on training); best.pt is for use.
        save_checkpoint(weights / "last.pt", {**training_state(t, 0), "metrics": record["metrics"]})
        keep = t.cfg.train.keep_last
        if keep > 0:
            save_checkpoint(weights / f"epoch-{record['epoch']}.pt", state)
            for old in sorted(weights.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))[:-keep]:
                old.unlink()
        if best_index(t.history, t.cfg.train.early_stop_metric) == len(t.history) - 1:
            save_checkpoint(weights / "best.pt", state)

    def on_interrupt(self, trainer: Any, epoch: int, iteration: int) -> None:
        """``last.pt`` at batch ``iteration`` of the current epoch: the exact state to resume from."""
        save_checkpoint(Path(trainer.run_dir) / "weights" / "last.pt", training_state(trainer, iteration))
