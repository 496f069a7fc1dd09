"""Owns what a run's checkpoints hold and when each is written, and which epoch is the best.

Files in ``run_dir/weights/``: ``last.pt`` after every epoch and at an interruption (with the
optimiser, schedule, scaler, RNG and history: everything resuming needs), ``best.pt`` for the best
epoch (see :func:`best_index`), ``epoch-N.pt`` for the last ``train.keep_last`` epochs and ``ema.pt``
for the EMA weights. Every file is written atomically by :func:`segtune.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from segtune.checkpoint import save_checkpoint
from segtune.engine.hooks import select_metric
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


class Checkpointer:
    """Writes the checkpoints of the run ``trainer`` is training (rank 0 calls it)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    @property
    def weights(self) -> Path:
        return Path(self.trainer.run_dir) / "weights"

    def state(self) -> dict[str, Any]:
        """What every checkpoint holds: the model and what rebuilds and labels it."""
        t = self.trainer
        return {"model": t.model.state_dict(), "epoch": t.epoch, "step": t.step,
                "classes": list(t.run.classes), "category_ids": list(t.run.category_ids),
                "config": t.cfg.to_dict(), "run": t.run.to_dict(), "split": t.split, **t.keypoints}

    def training_state(self, iteration: int) -> dict[str, Any]:
        """:meth:`state` plus what resuming at batch ``iteration`` of the current epoch needs."""
        t = self.trainer
        state = {**self.state(), "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
                 "scaler": t.scaler.state_dict(), "iteration": iteration, "rng": capture_rng(),
                 "train_time_s": t.clock.elapsed, "history": t.history}
        if t.ema is not None:
            state["ema"] = t.ema.state_dict()
        return state

    def save_epoch(self, record: dict[str, Any]) -> None:
        """After epoch ``record["epoch"]``: ``last.pt``, ``epoch-N.pt``, ``ema.pt`` and, if it is the best, ``best.pt``."""
        t = self.trainer
        state = {**self.state(), "metrics": record["metrics"]}
        # last.pt also holds the optimiser, schedule and RNG states (to go on training); best.pt is for use.
        save_checkpoint(self.weights / "last.pt", {**self.training_state(0), "metrics": record["metrics"]})
        keep = t.cfg.train.keep_last
        if keep > 0:
            save_checkpoint(self.weights / f"epoch-{record['epoch']}.pt", state)
            for old in sorted(self.weights.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))[:-keep]:
                old.unlink()
        if t.ema is not None:
            save_checkpoint(self.weights / "ema.pt", {**state, "model": t.ema.module.state_dict(),
                                                      "metrics": record["ema"]})
        best = best_index(t.history, t.cfg.train.early_stop_metric)
        if best == len(t.history) - 1:
            save_checkpoint(self.weights / "best.pt", state)
        logger.info("epoch %d: %s  (best epoch %d)", record["epoch"],
                    "  ".join(f"{k} AP {m['AP']:.4f}" for k, m in record["metrics"].items()), t.history[best]["epoch"])

    def save_interrupted(self, iteration: int) -> Path:
        """``last.pt`` at batch ``iteration`` of the current epoch: the exact state to resume from."""
        return save_checkpoint(self.weights / "last.pt", self.training_state(iteration))
