"""Owns the hooks that draw a run: TensorBoard event files and the ``results.png`` plot."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from segtune.engine.hooks import HOOKS, Hook, TrainerView, _number, flatten_record
from segtune.fileio import atomic_write
from segtune.run_files import RESULTS_PNG, TENSORBOARD_DIR


@HOOKS.register("tensorboard")
class TensorBoardHook(Hook):
    """TensorBoard event files in ``log_dir``: every step's loss terms and learning rate, every
    epoch's record (mean losses, AP statistics, ...).

    Tags: ``step/<loss term>`` and ``step/lr`` against the step; :func:`flatten_record`'s tags
    (``train/loss``, ``bbox/AP``, ``segm/AP50``, ``lr``, ...) against the epoch. View with
    ``tensorboard --logdir <run folder>``.
    """

    main_process_only = True
    name = "tensorboard"

    @classmethod
    def from_trainer(cls, trainer: TrainerView) -> TensorBoardHook:
        return cls(Path(trainer.run_dir) / TENSORBOARD_DIR)

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer = None

    def _writer(self):
        if self.writer is None:
            # Imported here: tensorboard costs a second to import and most commands never log.
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.writer

    def before_train(self, trainer: TrainerView) -> None:
        self._writer()

    def after_step(self, trainer: TrainerView, step: int, losses: dict[str, float]) -> None:
        writer = self._writer()
        for name, value in losses.items():
            if (number := _number(value)) is not None:
                writer.add_scalar(f"step/{name}", number, step)
        writer.add_scalar("step/lr", trainer.optimizer.param_groups[0]["lr"], step)

    def after_epoch(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        writer = self._writer()
        for tag, value in flatten_record(record).items():
            writer.add_scalar(tag, value, epoch)
        writer.flush()  # one flush per epoch: the curves are up to date while training goes on

    def after_train(self, trainer: TrainerView, result: Any) -> None:
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
    # Fixed margins rather than a constrained layout, which measured every label's extent and took about
    # 90% of the drawing time: this plot is redrawn after every epoch.
    width, height = 3.2 * cols, 2.6 * rows
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.5 / width, right=1 - 0.15 / width, bottom=0.45 / height, top=1 - 0.3 / height,
                        wspace=0.35, hspace=0.45 * 2.6 / max(2.6, height / rows))
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
    name = "results_plot"

    @classmethod
    def from_trainer(cls, trainer: TrainerView) -> ResultsPlotHook:
        return cls(trainer.run_dir)

    def __init__(self, run_dir: str | Path, filename: str = RESULTS_PNG) -> None:
        self.path = Path(run_dir) / filename

    def write(self, history: list[dict[str, Any]]) -> Path | None:
        """Draw ``history`` and replace the file atomically; None (nothing written) for no epochs."""
        if not history:
            return None
        fig = plot_results(history)
        return atomic_write(self.path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)

    def after_epoch(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        history = list(trainer.history)
        if not history or (history[-1] is not record and history[-1].get("epoch") != record.get("epoch")):
            history.append(record)  # the trainer may append the record after the hooks ran
        self.write(history)


