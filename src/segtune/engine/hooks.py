"""Owns the training hooks: the points where code runs around the loop, what a hook may read of the
trainer (:class:`TrainerView`), their registry, and the small hooks.

A hook subclasses :class:`Hook` and implements any of its methods; each gets the trainer, of which a
hook reads what :class:`TrainerView` lists and nothing else. The order of a run::

    before_train
    for each epoch:   before_epoch, after_step (every optimiser step),
                      evaluate (fill the epoch's record), after_eval, after_epoch
    on_interrupt      (only when a signal or a hook stops training inside an epoch)
    after_train

Everything the loop does besides the steps is a hook, built in the order of
``segtune.engine.default_hooks.DEFAULT_HOOKS`` from the :data:`HOOKS` registry: the time budget, EMA,
evaluation, validation loss, metrics files, checkpoints, the results plot, TensorBoard, early stopping.
A hook with a ``name`` keeps its state for resume through :meth:`Hook.state_dict` (saved in ``last.pt``).

Hooks whose ``main_process_only`` is True run on rank 0 only (those that write files); the others
run on every rank, so they must decide the same way everywhere (``EarlyStopping`` does, as every
rank receives the same metrics). Users add their own with :class:`CallbackHook` or a subclass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from segtune.engine.distributed import is_main_process
from segtune.errors import ConfigError
from segtune.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from segtune.checkpoint import RunState
    from segtune.config import Config
    from segtune.data import DetectionDataset
    from segtune.engine.budget import Stopwatch
    from segtune.engine.distributed import DistInfo
    from segtune.engine.run import TrainResult
    from segtune.engine.run_data import RunData

logger = logging.getLogger("segtune.train")

EVENTS = ("before_train", "before_epoch", "after_step", "evaluate", "after_eval", "after_epoch", "on_interrupt",
          "after_train")
HOOKS: Registry[type] = Registry("hook")


class TrainerView(Protocol):
    """What a hook may read of the trainer it receives, and the few things it may change.

    :class:`~segtune.engine.trainer.Trainer` has all of it; a test may hand a hook any object with the
    attributes that hook reads. Everything else on the trainer is the loop's own.

    Attributes:
        cfg: the run's config: as given, with ``model.adapt_to_data``'s fitted settings (a new run);
            fixed once the run is built, and what ``config.yaml`` and the checkpoints hold.
        run: the :class:`~segtune.checkpoint.RunState`: data path, classes, the epochs to go to; the time
            budget may refit ``epochs`` and ``max_steps``.
        run_dir: the run folder (file names in :mod:`segtune.run_files`).
        dist: rank, world size and backend of this process (:class:`~segtune.engine.distributed.DistInfo`).
        device: this process's device.
        data: the opened data sets and the data doctor's reports (:class:`~segtune.engine.run_data.RunData`).
        split: the train and test file names (and ``source``: where the split came from).
        keypoints: the checkpoints' keypoint keys (``num_keypoints``, ...); empty without keypoints.
        train_ds: the training view of the data (augmented).
        test_ds: the view that is evaluated: the test split, evaluation transforms.
        workers: loader worker processes, for a loader a hook makes.
        model: the model being trained (unwrapped from DDP); what checkpoints save.
        optimizer: the optimiser (``param_groups[0]["lr"]`` is the current rate).
        scheduler: the learning-rate schedule (stepped after every optimiser step).
        scaler: the grad scaler (fp16 only; saved in ``last.pt``).
        autocast_dtype: the autocast dtype of a training step; None without autocast.
        iters: batches per epoch.
        accumulate: batches per optimiser step.
        epoch: the current epoch (0-based); after it ends, the next one.
        step: optimiser steps done in the run.
        start_iteration: batches of the current epoch done before this process started (a resume).
        history: one record per finished epoch, as in ``metrics.json``.
        resumed_from: the ``last.pt`` this run went on from, else None.
        clock: the training clock (steps and data, not evaluation); pause it around other work.
        hooks: the run's hooks; ``hooks.get(name)`` finds a named one.
        end_reason: why training ends after this step (set by :meth:`end_training`), else None.
        stop_training: set it to stop after this step (inside an epoch: an interruption, ``last.pt`` at
            that batch) or after this epoch (in ``after_epoch``).
        time_left: seconds of training left, if a hook (the time budget) sets it; the progress ETA uses it.
        max_steps: the step where the schedule fitted to the time limit ends, else None (``run.max_steps``).
    """

    cfg: Config
    run: RunState
    run_dir: Path
    dist: DistInfo
    device: torch.device
    data: RunData
    split: dict[str, Any]
    keypoints: dict[str, Any]
    train_ds: DetectionDataset
    test_ds: DetectionDataset
    workers: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    iters: int
    accumulate: int
    epoch: int
    step: int
    start_iteration: int
    history: list[dict[str, Any]]
    resumed_from: str | None
    clock: Stopwatch
    hooks: HookList
    end_reason: str | None
    stop_training: bool
    time_left: Callable[[], float] | None

    @property
    def max_steps(self) -> int | None: ...

    def end_training(self, reason: str) -> None:
        """End training after this optimiser step: the part-epoch is evaluated and saved as the last one."""


class Hook:
    """Base class: every method does nothing; override the ones you need.

    Attributes:
        main_process_only: run only on rank 0 (set it for hooks that write files or print).
    """

    main_process_only: bool = False
    #: The registry name; a hook with one can be found with ``trainer.hooks.get(name)`` and keeps its state.
    name: str | None = None

    @classmethod
    def from_trainer(cls, trainer: TrainerView) -> Hook:
        """The hook as the trainer's config asks for it (how the built-in hooks are made)."""
        return cls()

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs of this hook (saved in ``last.pt`` under ``hooks/<name>``); empty: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` returned."""

    def before_train(self, trainer: TrainerView) -> None:
        """Once, before the first epoch (after a resume, ``trainer.history`` holds the earlier epochs)."""

    def before_epoch(self, trainer: TrainerView, epoch: int) -> None:
        """At the start of epoch ``epoch`` (0-based)."""

    def after_step(self, trainer: TrainerView, step: int, losses: dict[str, float]) -> None:
        """After optimiser step ``step`` (1-based, counted over the run); ``losses`` are this step's terms."""

    def evaluate(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        """After the training part of epoch ``epoch``: add results to its ``record`` (``metrics``, ``ema``, ``val``)."""

    def after_eval(self, trainer: TrainerView, epoch: int, metrics: dict[str, dict[str, float]]) -> None:
        """After the evaluation of epoch ``epoch``; ``metrics`` as ``{"bbox": {"AP": ..., ...}, "segm": ...}``."""

    def after_epoch(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        """At the end of epoch ``epoch``; ``record`` is the epoch's entry of ``metrics.json``."""

    def on_interrupt(self, trainer: TrainerView, epoch: int, iteration: int) -> None:
        """Training stops inside epoch ``epoch`` after batch ``iteration`` (a signal, or a hook asked)."""

    def after_train(self, trainer: TrainerView, result: TrainResult) -> None:
        """Once, when training ends (also after an early stop)."""


class HookList:
    """Hooks called in order, each event on every hook; ``main_process_only`` hooks on rank 0 only."""

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self.hooks: list[Hook] = list(hooks)

    def __iter__(self) -> Iterator[Hook]:
        return iter(self.hooks)

    def __len__(self) -> int:
        return len(self.hooks)

    def get(self, name: str) -> Any:
        """The hook registered as ``name``, or None when the run has none."""
        return next((hook for hook in self.hooks if hook.name == name), None)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """``{name: state}`` of every named hook with state to keep."""
        return {hook.name: state for hook in self.hooks if hook.name and (state := hook.state_dict())}

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> None:
        for hook in self.hooks:
            if hook.name in states:
                hook.load_state_dict(states[hook.name])

    def _call(self, event: str, trainer: TrainerView, *args: Any) -> None:
        main = is_main_process()
        for hook in self.hooks:
            if hook.main_process_only and not main:
                continue
            getattr(hook, event)(trainer, *args)

    def before_train(self, trainer: TrainerView) -> None:
        self._call("before_train", trainer)

    def before_epoch(self, trainer: TrainerView, epoch: int) -> None:
        self._call("before_epoch", trainer, epoch)

    def after_step(self, trainer: TrainerView, step: int, losses: dict[str, float]) -> None:
        self._call("after_step", trainer, step, losses)

    def evaluate(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        self._call("evaluate", trainer, epoch, record)

    def after_eval(self, trainer: TrainerView, epoch: int, metrics: dict[str, dict[str, float]]) -> None:
        self._call("after_eval", trainer, epoch, metrics)

    def after_epoch(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        self._call("after_epoch", trainer, epoch, record)

    def on_interrupt(self, trainer: TrainerView, epoch: int, iteration: int) -> None:
        self._call("on_interrupt", trainer, epoch, iteration)

    def after_train(self, trainer: TrainerView, result: TrainResult) -> None:
        self._call("after_train", trainer, result)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def flatten_record(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers in an epoch record as ``tag: value``, nested keys joined by ``/``.

    The ``metrics`` level is dropped (``bbox/AP``, ``segm/AP50``), as are ``epoch`` and ``step``
    (the x axis); everything else keeps its path: ``train/loss``, ``lr``, ``eval_time_s``, and
    e.g. ``ema/bbox/AP`` for an EMA's metrics stored under ``record["ema"]``.
    """
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                walk(f"{prefix}/{key}" if prefix else str(key), sub)
        elif (number := _number(value)) is not None:
            out[prefix] = number

    for key, value in record.items():
        if key in ("epoch", "step"):
            continue
        walk("" if key == "metrics" else key, value)
    return out


def select_metric(metrics: Mapping[str, Mapping[str, float]], name: str = "auto") -> tuple[str, float]:
    """The metric ``name`` names in ``metrics``, as ``(resolved name, value)``.

    Args:
        metrics: ``{"bbox": {"AP": ..., "AP50": ...}, "segm": {...}}`` from the evaluator.
        name: ``auto`` (``segm/AP`` when there are masks, else ``keypoints/AP``, else ``bbox/AP``) or ``type/stat``, e.g.
            ``bbox/AP50``.

    Raises:
        ConfigError: ``name`` is not among ``metrics``; the message lists the ones there are.
    """
    if name == "auto":  # the same order as segtune.evaluation.primary_metric
        name = next(f"{t}/AP" for t in ("segm", "keypoints", "bbox") if t in metrics or t == "bbox")
    iou_type, _, stat = name.partition("/")
    try:
        return name, float(metrics[iou_type][stat])
    except (KeyError, TypeError):
        choices = ", ".join(f"{t}/{s}" for t, stats in metrics.items() for s in stats)
        raise ConfigError(f"train.early_stop_metric '{name}' is not in the evaluation results; "
                          f"choose auto or one of: {choices}") from None


@HOOKS.register("early_stopping")
class EarlyStopping(Hook):
    """Stop training when ``metric`` has not improved for ``patience`` epochs in a row.

    Sets ``trainer.stop_training = True``; the trainer finishes the epoch (checkpoints included)
    and ends. Runs on every rank: each must stop at the same epoch, and each sees the same metrics.
    Epochs without metrics (no evaluation that epoch) are not counted.

    Args:
        metric: ``auto`` (segm AP with masks, else bbox AP) or ``type/stat`` such as ``bbox/AP50``;
            higher is better.
        patience: epochs without improvement to accept (at least 1).
    """

    name = "early_stopping"

    @classmethod
    def from_trainer(cls, trainer: TrainerView) -> EarlyStopping:
        return cls(trainer.cfg.train.early_stop_metric, trainer.cfg.train.early_stop_patience)

    def __init__(self, metric: str = "auto", patience: int = 5) -> None:
        if patience < 1:
            raise ConfigError(f"train.early_stop_patience must be at least 1 epoch (got {patience})")
        self.metric, self.patience = metric, patience
        self.best = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0

    def before_train(self, trainer: TrainerView) -> None:
        # After a resume, the earlier epochs count: replay them.
        self.best, self.best_epoch, self.bad_epochs = -math.inf, -1, 0
        for record in getattr(trainer, "history", []):
            self._observe(record.get("epoch", -1), record)

    def _observe(self, epoch: int, record: Mapping[str, Any]) -> bool:
        metrics = record.get("metrics")
        if not metrics:
            return False
        name, value = select_metric(metrics, self.metric)
        if value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def after_epoch(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        if self._observe(epoch, record):
            trainer.stop_training = True
            name, _ = select_metric(record["metrics"], self.metric)
            logger.info("early stop: %s has not improved for %d epochs (best %.4f at epoch %d)",
                        name, self.bad_epochs, self.best, self.best_epoch)


@HOOKS.register("callback")
class CallbackHook(Hook):
    """User functions as a hook: ``{"after_epoch": fn, ...}``, each called as ``fn(trainer, *args)``.

    Example::

        def log_ap(trainer, epoch, record):
            print(epoch, record["metrics"]["bbox"]["AP"])

        CallbackHook({"after_epoch": log_ap})

    Args:
        fn_by_event: event name (one of :data:`EVENTS`) to function; the function gets the same
            arguments as the :class:`Hook` method of that name.
        main_process_only: call on rank 0 only (the default: logging once is what users want).

    Raises:
        ValueError: an unknown event name, or a value that is not callable.
    """

    def __init__(self, fn_by_event: Mapping[str, Callable[..., Any]], *, main_process_only: bool = True) -> None:
        for event, fn in fn_by_event.items():
            if event not in EVENTS:
                raise ValueError(f"CallbackHook: unknown event '{event}'; choose from: {', '.join(EVENTS)}")
            if not callable(fn):
                raise ValueError(f"CallbackHook: the function for '{event}' is not callable ({fn!r})")
        self.fns = dict(fn_by_event)
        self.main_process_only = main_process_only

    def _fire(self, event: str, trainer: TrainerView, *args: Any) -> None:
        fn = self.fns.get(event)
        if fn is not None:
            fn(trainer, *args)

    def before_train(self, trainer: TrainerView) -> None:
        self._fire("before_train", trainer)

    def before_epoch(self, trainer: TrainerView, epoch: int) -> None:
        self._fire("before_epoch", trainer, epoch)

    def after_step(self, trainer: TrainerView, step: int, losses: dict[str, float]) -> None:
        self._fire("after_step", trainer, step, losses)

    def evaluate(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        self._fire("evaluate", trainer, epoch, record)

    def after_eval(self, trainer: TrainerView, epoch: int, metrics: dict[str, dict[str, float]]) -> None:
        self._fire("after_eval", trainer, epoch, metrics)

    def after_epoch(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        self._fire("after_epoch", trainer, epoch, record)

    def on_interrupt(self, trainer: TrainerView, epoch: int, iteration: int) -> None:
        self._fire("on_interrupt", trainer, epoch, iteration)

    def after_train(self, trainer: TrainerView, result: TrainResult) -> None:
        self._fire("after_train", trainer, result)
