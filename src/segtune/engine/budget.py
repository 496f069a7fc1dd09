"""Owns training-time budgets: the training clock, ``train.time_limit``, and fitting the schedule to it."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from segtune.engine import distributed as dist
from segtune.engine.hooks import HOOKS, Hook, TrainerView

logger = logging.getLogger("segtune.train")

#: ``fit_to_time_limit`` times the optimiser steps from the first of these; it fits the schedule after
#: the second, then again after 2x, 4x, ... as many (the first steps are slow).
CALIBRATE_STEPS = (5, 25)


def now() -> float:
    """The training clock's time source, in seconds (tests put a fake clock here, so no test hangs on speed)."""
    return time.perf_counter()


class Stopwatch:
    """Seconds spent training (steps and data), not evaluating; can be paused by a hook that does other work."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self._elapsed, self._since = elapsed, None

    @property
    def elapsed(self) -> float:
        return self._elapsed + (now() - self._since if self._since is not None else 0.0)

    def start(self) -> None:
        if self._since is None:
            self._since = now()

    def stop(self) -> None:
        self._elapsed, self._since = self.elapsed, None

    @contextlib.contextmanager
    def paused(self) -> Any:
        running = self._since is not None
        self.stop()
        try:
            yield
        finally:
            if running:
                self.start()


class TimeBudget:
    """A limit on training time and, with ``fit``, the step where the schedule fitted to it ends.

    Fitting times the steps since :data:`CALIBRATE_STEPS` ``[0]`` and, at ``CALIBRATE_STEPS[1]`` x 1,
    2, 4, ... steps, sets ``max_steps`` to the steps that fit in the time left (so a passing slowdown
    of the machine does not fix the length). After a resume ``max_steps`` stays as it was fitted.

    Args:
        limit_min: minutes of training; None = no limit (and nothing to fit).
        fit: fit ``max_steps`` to the limit.
        elapsed: training seconds already spent (a resumed run).
        max_steps: a length fitted before (a resumed run).
        share: makes one process's value everyone's (rank 0's under torch.distributed); identity alone.
    """

    def __init__(self, limit_min: float | None, *, fit: bool = False, elapsed: float = 0.0,
                 max_steps: int | None = None, share: Callable[[Any], Any] = lambda value: value) -> None:
        self.limit_s = None if limit_min is None else limit_min * 60.0
        self.fit = fit and limit_min is not None
        self.clock = Stopwatch(elapsed)
        self.max_steps = max_steps
        self._share = share
        self._start: float | None = None

    def out_of_time(self) -> bool:
        return self.limit_s is not None and bool(self._share(self.clock.elapsed >= self.limit_s))

    def seconds_left(self) -> float:
        """Training seconds left before the limit (infinite without one)."""
        return float("inf") if self.limit_s is None else self.limit_s - self.clock.elapsed

    def spent(self, step: int) -> bool:
        """Whether training should stop after optimiser step ``step``: the limit passed, or the fitted end."""
        return (self.max_steps is not None and step >= self.max_steps) or self.out_of_time()

    def reason(self, step: int) -> str:
        if self.max_steps is not None and step >= self.max_steps:
            return f"the schedule fitted to the time limit ends at step {self.max_steps}"
        return f"time limit of {self.limit_s / 60:g} min reached"

    def refit(self, step: int) -> tuple[int, float] | None:
        """After optimiser step ``step``: ``(max_steps, seconds per step)`` when the length was fitted now, else None."""
        if not self.fit:
            return None
        first, last = CALIBRATE_STEPS
        if step == first:
            self._start = self.clock.elapsed
        rounds = step // last
        if self._start is None or step % last or rounds & (rounds - 1):  # at last x 1, 2, 4, ...
            return None
        seconds = float(self._share((self.clock.elapsed - self._start) / (step - first)))
        self.max_steps = step + max(0, int((self.limit_s - self.clock.elapsed) / seconds))
        return self.max_steps, seconds


def fit_schedule(scheduler: Any, max_steps: int, seconds: float, iters: int, accumulate: int, train_cfg: Any) -> int:
    """End the schedule's factors at ``max_steps`` (the step the budget fitted); return the epochs that span.

    ``iters`` batches make an epoch of ``ceil(iters / accumulate)`` optimiser steps.
    """
    steps_per_epoch = math.ceil(iters / accumulate)
    epochs = max(1, math.ceil(max_steps / steps_per_epoch))
    for factor in scheduler.lr_lambdas:
        factor.total_iters = max_steps
    logger.info("fit to the time limit of %g min: %.2f s per step, so %d steps (%d epochs of %d) fit; the %s "
                "schedule ends there", train_cfg.time_limit, seconds, max_steps, epochs, steps_per_epoch,
                train_cfg.schedule)
    return epochs


@HOOKS.register("time_budget")
class TimeBudgetHook(Hook):
    """``train.time_limit`` (and ``train.fit_to_time_limit``) as a hook on the trainer's training clock.

    After each optimiser step: with fitting, sizes the schedule to the steps that fit (the epochs
    and last step go into the run state, ``trainer.run``); once the limit or the fitted end is
    reached, asks the trainer to end (``trainer.end_training``): the part-epoch is evaluated and
    saved as the last. A resumed run keeps the length fitted before (``run.max_steps``). Runs on
    every rank: rank 0's clock decides for all.
    """

    name = "time_budget"

    @classmethod
    def from_trainer(cls, trainer: TrainerView) -> TimeBudgetHook:
        share = dist.broadcast_object if trainer.dist.world_size > 1 else (lambda value: value)
        return cls(trainer.cfg.train.time_limit, fit=trainer.cfg.train.fit_to_time_limit, share=share)

    def __init__(self, limit_min: float | None, *, fit: bool = False,
                 share: Callable[[Any], Any] = lambda value: value) -> None:
        self.budget = TimeBudget(limit_min, fit=fit, share=share)

    def before_train(self, trainer: TrainerView) -> None:
        self.budget.clock = trainer.clock
        if trainer.run.max_steps is not None:  # fitted before a resume: keep that length
            self.budget.max_steps, self.budget.fit = trainer.run.max_steps, False
        trainer.time_left = self.budget.seconds_left

    def after_step(self, trainer: TrainerView, step: int, losses: dict[str, float]) -> None:
        fitted = self.budget.refit(step)
        if fitted is not None:
            trainer.run.epochs = fit_schedule(trainer.scheduler, *fitted, trainer.iters, trainer.accumulate,
                                              trainer.cfg.train)
            trainer.run.max_steps = self.budget.max_steps
        if self.budget.spent(step):
            trainer.end_training(self.budget.reason(step))
