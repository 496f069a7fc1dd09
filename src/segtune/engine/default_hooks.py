"""Owns which built-in hooks a run has and in what order: the one place a new built-in hook is added.

Each entry names a hook in the :data:`~segtune.engine.hooks.HOOKS` registry and says when the config
turns it on; :func:`build_hooks` looks each up and makes it with its ``from_trainer``. Order matters
within an event: the time budget decides before the others see a step, evaluation fills the epoch's
record before the EMA's and the validation loss's additions, the metrics files and checkpoints are
written before the plot and early stopping look at the epoch; the report is written last, when the
test set has been scored. User hooks run after these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Imported for their registration in HOOKS.
from segtune.engine import (budget, checkpoints, ema, eval_hook, holdout, log_hooks, report_hook,  # noqa: F401
                            run, val_loss)
from segtune.engine.hooks import HOOKS, Hook, TrainerView

#: ``(registry name, on)``: the built-in hooks, in the order they run; ``on(cfg)`` says whether a run has it.
DEFAULT_HOOKS: list[tuple[str, Callable[[Any], bool]]] = [
    ("time_budget", lambda cfg: cfg.train.time_limit is not None),
    ("evaluation", lambda cfg: True),
    ("ema", lambda cfg: cfg.train.ema),
    ("val_loss", lambda cfg: cfg.train.val_loss),
    ("metrics_files", lambda cfg: True),
    ("checkpoints", lambda cfg: True),
    ("results_plot", lambda cfg: True),
    ("tensorboard", lambda cfg: cfg.train.tensorboard),
    ("early_stopping", lambda cfg: cfg.train.early_stop_patience is not None),
    ("test_set", lambda cfg: cfg.data.test_path is not None),
    ("report", lambda cfg: cfg.train.report),
]


def build_hooks(trainer: TrainerView) -> list[Hook]:
    """The built-in hooks ``trainer.cfg`` turns on, made from the registry in :data:`DEFAULT_HOOKS` order."""
    return [HOOKS.get(name).from_trainer(trainer) for name, on in DEFAULT_HOOKS if on(trainer.cfg)]
