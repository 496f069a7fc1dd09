"""Owns the training hooks: the points where code runs around the loop, and the built-in hooks.

A hook subclasses :class:`Hook` and implements any of its six methods; each gets the trainer, which
has at least ``run_dir``, ``cfg``, ``model``, ``optimizer``, ``epoch``, ``step``, ``history`` (one
record per finished epoch, as in ``metrics.json``) and ``stop_training``. The order of a run::

    before_train
    for each epoch:   before_epoch, after_step (every optimiser step), after_eval, after_epoch
    after_train

Hooks whose ``main_process_only`` is True run on rank 0 only (those that write files); the others
run on every rank, so they must decide the same way everywhere (``EarlyStopping`` does, as every
rank receives the same metrics). Users add their own with :class:`CallbackHook` or a subclass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from segtune.engine.distributed import is_main_process
from segtune.errors import ConfigError
from segtune.fileio import atomic_write
from segtune.registry import Registry

logger = logging.getLogger("segtune.train")

EVENTS = ("before_train", "before_epoch", "after_step", "after_eval", "after_epoch", "after_train")
HOOKS: Registry[type] = Registry("hook")


class Hook:
    """Base class: every method does nothing; override the ones you need.

    Attributes:
        main_process_only: run only on rank 0 (set it for hooks that write files or print).
    """

    main_process_only: bool = False

    def before_train(self, trainer: Any) -> None:
        """Once, before the first epoch (after a resume, ``trainer.history`` holds the earlier epochs)."""

    def before_epoch(self, trainer: Any, epoch: int) -> None:
        """At the start of epoch ``epoch`` (0-based)."""

    def after_step(self, trainer: Any, step: int, losses: dict[str, float]) -> None:
        """After optimiser step ``step`` (1-based, counted over the run); ``losses`` are this step's terms."""

    def after_eval(self, trainer: Any, epoch: int, metrics: dict[str, dict[str, float]]) -> None:
        """After the evaluation of epoch ``epoch``; ``metrics`` as ``{"bbox": {"AP": ..., ...}, "segm": ...}``."""

    def after_epoch(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        """At the end of epoch ``epoch``; ``record`` is the epoch's entry of ``metrics.json``."""

    def after_train(self, trainer: Any, result: Any) -> None:
        """Once, when training ends (also after an early stop)."""


class HookList:
    """Hooks called in order, each event on every hook; ``main_process_only`` hooks on rank 0 only."""

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self.hooks: list[Hook] = list(hooks)

    def append(self, hook: Hook) -> None:
        self.hooks.append(hook)

    def __iter__(self) -> Iterator[Hook]:
        return iter(self.hooks)

    def __len__(self) -> int:
        return len(self.hooks)

    def _call(self, event: str, trainer: Any, *args: Any) -> None:
        main = is_main_process()
        for hook in self.hooks:
            if hook.main_process_only and not main:
                continue
            getattr(hook, event)(trainer, *args)

    def before_train(self, trainer: Any) -> None:
        self._call("before_train", trainer)

    def before_epoch(self, trainer: Any, epoch: int) -> None:
        self._call("before_epoch", trainer, epoch)

    def after_step(self, trainer: Any, step: int, losses: dict[str, float]) -> None:
        self._call("after_step", trainer, step, losses)

    def after_eval(self, trainer: Any, epoch: int, metrics: dict[str, dict[str, float]]) -> None:
        self._call("after_eval", trainer, epoch, metrics)

    def after_epoch(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        self._call("after_epoch", trainer, epoch, record)

    def after_train(self, trainer: Any, result: Any) -> None:
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


@HOOKS.register("tensorboard")
class TensorBoardHook(Hook):
    """TensorBoard event files in ``log_dir``: every step's loss terms and learning rate, every
    epoch's record (mean losses, AP statistics, ...).

    Tags: ``step/<loss term>`` and ``step/lr`` against the step; :func:`flatten_record`'s tags
    (``train/loss``, ``bbox/AP``, ``segm/AP50``, ``lr``, ...) against the epoch. View with
    ``tensorboard --logdir <run folder>``.
    """

    main_process_only = True

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer = None

    def _writer(self):
        if self.writer is None:
            # Imported here: tensorboard costs a second to import and most commands never log.
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.writer

    def before_train(self, trainer: Any) -> None:
        self._writer()

    def after_step(self, trainer: Any, step: int, losses: dict[str, float]) -> None:
        writer = self._writer()
        for name, value in losses.items():
            if (number := _number(value)) is not None:
                writer.add_scalar(f"step/{name}", number, step)
        optimizer = getattr(trainer, "optimizer", None)
        if optimizer is not None:
            writer.add_scalar("step/lr", optimizer.param_groups[0]["lr"], step)

    def after_epoch(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        writer = self._writer()
        for tag, value in flatten_record(record).items():
            writer.add_scalar(tag, value, epoch)
        writer.flush()  # one flush per epoch: the curves are up to date while training goes on

    def after_train(self, trainer: Any, result: Any) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def _loss_terms(history: list[dict[str, Any]]) -> list[str]:
    terms: list[str] = []
    for record in history:
        terms.extend(k for k in record.get("train", {}) if k.startswith("loss") and k not in terms)
    return terms


def _metric_sets(history: list[dict[str, Any]]) -> dict[str, list[str]]:
    """``{"": [iou types]}`` for ``record["metrics"]``, plus ``{key: [...]}`` for other metric-shaped keys (EMA)."""
    sets: dict[str, list[str]] = {}
    for record in history:
        for key, value in record.items():
            if key == "metrics":
                key = ""
            elif key in ("train", "epoch", "step") or not isinstance(value, Mapping) or not value:
                continue
            if not all(isinstance(v, Mapping) and "AP" in v for v in value.values()):
                continue  # not {iou_type: {stat: value}}
            types = sets.setdefault(key, [])
            types.extend(t for t in value if t not in types)
    return sets


def plot_results(history: list[dict[str, Any]]):
    """A matplotlib ``Figure`` of ``history``: one panel per loss term, one per IoU type (AP, AP50, AP75).

    Validation losses under ``record["val"]`` are drawn dashed beside the training ones; metrics of
    another model under a metric-shaped key (``record["ema"] = {"bbox": {...}}``) dashed beside the
    model's. Drawn on the Agg canvas, without pyplot, so no display and no global state are touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    terms = _loss_terms(history)
    metric_sets = _metric_sets(history)
    iou_types: list[str] = []
    for types in metric_sets.values():
        iou_types.extend(t for t in types if t not in iou_types)
    panels = len(terms) + len(iou_types)
    cols = min(4, max(1, panels))
    rows = max(1, math.ceil(panels / cols))
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()

    def series(get: Callable[[dict[str, Any]], Any], *, metric: bool = False) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for record in history:
            try:
                value = _number(get(record))
            except (KeyError, TypeError, AttributeError):
                value = None
            # COCO reports -1 for "not applicable" (no ground truth of that size): not a point to draw.
            if value is not None and math.isfinite(value) and not (metric and value < 0):
                xs.append(record["epoch"])
                ys.append(value)
        return xs, ys

    i = 0
    for term in terms:
        ax = axes[i]
        ax.plot(*series(lambda r: r["train"][term]), marker=".", label="train")
        xs, ys = series(lambda r: r["val"][term])
        if xs:
            ax.plot(xs, ys, marker=".", linestyle="--", label="val")
        ax.set_title(term, fontsize=9)
        i += 1
    for iou_type in iou_types:
        ax = axes[i]
        for key in metric_sets:
            for color, stat in zip(("C0", "C1", "C2"), ("AP", "AP50", "AP75")):
                xs, ys = series(lambda r: (r["metrics"] if key == "" else r[key])[iou_type][stat], metric=True)
                if xs:
                    ax.plot(xs, ys, marker=".", color=color, linestyle="-" if key == "" else "--",
                            label=f"{key} {stat}".strip())
        ax.set_title(f"{iou_type} AP", fontsize=9)
        i += 1
    for ax in axes[:i]:
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[i:]:
        ax.set_visible(False)
    return fig


@HOOKS.register("results_plot")
class ResultsPlotHook(Hook):
    """``results.png`` in ``run_dir``, redrawn after every epoch: loss terms and AP per epoch."""

    main_process_only = True

    def __init__(self, run_dir: str | Path, filename: str = "results.png") -> None:
        self.path = Path(run_dir) / filename

    def write(self, history: list[dict[str, Any]]) -> Path | None:
        """Draw ``history`` and replace the file atomically; None (nothing written) for no epochs."""
        if not history:
            return None
        fig = plot_results(history)
        return atomic_write(self.path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)

    def after_epoch(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        history = list(getattr(trainer, "history", []))
        if not history or (history[-1] is not record and history[-1].get("epoch") != record.get("epoch")):
            history.append(record)  # the trainer may append the record after the hooks ran
        self.write(history)


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

    def __init__(self, metric: str = "auto", patience: int = 5) -> None:
        if patience < 1:
            raise ConfigError(f"train.early_stop_patience must be at least 1 epoch (got {patience})")
        self.metric, self.patience = metric, patience
        self.best = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0

    def before_train(self, trainer: Any) -> None:
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

    def after_epoch(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
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

    def _fire(self, event: str, trainer: Any, *args: Any) -> None:
        fn = self.fns.get(event)
        if fn is not None:
            fn(trainer, *args)

    def before_train(self, trainer: Any) -> None:
        self._fire("before_train", trainer)

    def before_epoch(self, trainer: Any, epoch: int) -> None:
        self._fire("before_epoch", trainer, epoch)

    def after_step(self, trainer: Any, step: int, losses: dict[str, float]) -> None:
        self._fire("after_step", trainer, step, losses)

    def after_eval(self, trainer: Any, epoch: int, metrics: dict[str, dict[str, float]]) -> None:
        self._fire("after_eval", trainer, epoch, metrics)

    def after_epoch(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        self._fire("after_epoch", trainer, epoch, record)

    def after_train(self, trainer: Any, result: Any) -> None:
        self._fire("after_train", trainer, result)
