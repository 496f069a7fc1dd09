"""Owns the report's plots: matplotlib figures drawn off-screen and returned as PNG data URIs.

Every function takes plain numbers (lists, dicts) and returns ``data:image/png;base64,...`` so the
page embeds it and opens offline. Figures are made with ``matplotlib.figure.Figure`` and the Agg
canvas, never pyplot: no global state, no display needed.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Width of a standard plot in inches (at :data:`DPI`), so plots line up in the page's grid.
WIDTH, HEIGHT, DPI = 5.2, 3.4, 90
#: The colours of the error-analysis stages, from the strictest (C75) to the loosest (FN).
STAGE_COLOURS = ("#1f4e79", "#2e75b6", "#9dc3e6", "#70ad47", "#ffc000", "#ed7d31", "#c00000")


def _figure(width: float = WIDTH, height: float = HEIGHT) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_uri(fig: Any) -> str:
    """The figure as a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def smooth(values: Sequence[float], window: int) -> list[float]:
    """A trailing moving average over ``window`` values (the first ones average what there is)."""
    data = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(data) < 2:
        return data.tolist()
    cumulative = np.cumsum(np.insert(data, 0, 0.0))
    end = np.arange(1, len(data) + 1)
    start = np.maximum(0, end - window)
    return ((cumulative[end] - cumulative[start]) / (end - start)).tolist()


def step_losses(steps: list[dict[str, Any]]) -> str | None:
    """Each loss term per optimiser step, raw (faint) and smoothed; None without steps."""
    if not steps:
        return None
    terms = [k for k in steps[0] if k not in ("step", "epoch", "lr")]
    fig = _figure(WIDTH * 2, HEIGHT)
    ax = fig.add_subplot(1, 1, 1)
    x = [s["step"] for s in steps]
    window = max(1, len(steps) // 25)
    for term in terms:
        y = [float(s.get(term, math.nan)) for s in steps]
        line, = ax.plot(x, smooth(y, window), label=term, lw=1.6 if term == "loss" else 1.1)
        ax.plot(x, y, color=line.get_color(), alpha=0.18, lw=0.6)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(f"loss (moving average of {window})")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    return to_uri(fig)


def epoch_losses(history: list[dict[str, Any]]) -> str | None:
    """The training loss terms per epoch, and the validation loss beside them when measured."""
    if not history:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    epochs = [r["epoch"] for r in history]
    for term in [k for k in history[0].get("train", {}) if k.startswith("loss")]:  # not its time_s, iters
        line, = ax.plot(epochs, [r["train"].get(term, math.nan) for r in history], marker="o", ms=3, label=term)
        if any(term in r.get("val", {}) for r in history):
            ax.plot(epochs, [r.get("val", {}).get(term, math.nan) for r in history], ls="--", marker="x", ms=3,
                    color=line.get_color(), label=f"val {term}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return to_uri(fig)


def learning_rate(steps: list[dict[str, Any]], history: list[dict[str, Any]]) -> str | None:
    """The learning rate per step (per epoch when there are no step records)."""
    points = [(s["step"], s["lr"]) for s in steps if "lr" in s] or [(r["epoch"], r["lr"]) for r in history]
    if not points:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([p[0] for p in points], [p[1] for p in points], color="#7030a0")
    ax.set_xlabel("optimiser step" if steps else "epoch")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    return to_uri(fig)


def ap_per_epoch(history: list[dict[str, Any]], best_epoch: int | None) -> str | None:
    """AP, AP50 and AP75 per epoch for each IoU type (boxes, masks, keypoints), the best epoch marked."""
    types = [t for t in ("bbox", "segm", "keypoints") if any(t in r.get("metrics", {}) for r in history)]
    if not types:
        return None
    fig = _figure(WIDTH * 2, HEIGHT)
    epochs = [r["epoch"] for r in history]
    for n, iou_type in enumerate(types, 1):
        ax = fig.add_subplot(1, len(types), n)
        for stat in ("AP", "AP50", "AP75"):
            ax.plot(epochs, [r.get("metrics", {}).get(iou_type, {}).get(stat, math.nan) for r in history],
                    marker="o", ms=3, label=stat)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1)
        ax.set_title({"bbox": "boxes", "segm": "masks"}.get(iou_type, iou_type), fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return to_uri(fig)


def pr_curves(curves: list[Any], iou: float, title: str) -> str | None:
    """Precision against recall at one IoU: one line per class and a thick one for all classes."""
    chosen = [c for c in curves if abs(c.iou - iou) < 1e-6 and c.ap >= 0]
    if not chosen:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for c in sorted(chosen, key=lambda c: c.name == "all"):
        overall = c.name == "all"
        ax.plot(c.recall, c.precision, lw=2.4 if overall else 1.0, color="black" if overall else None,
                label=f"{'all classes' if overall else c.name} {c.ap:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{title}, IoU {iou:g}", fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax, len(chosen))
    return to_uri(fig)


def threshold_curves(curve: Any, title: str) -> str | None:
    """Precision, recall and F1 against the score threshold, the best-F1 threshold marked."""
    if not curve.thresholds:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(curve.thresholds, curve.precision, label="precision")
    ax.plot(curve.thresholds, curve.recall, label="recall")
    ax.plot(curve.thresholds, curve.f1, label="F1", lw=2, color="black")
    ax.axvline(curve.best_threshold, color="#c00000", ls="--", lw=1)
    ax.annotate(f"best F1 {curve.best_f1:.3f}\nat score {curve.best_threshold:.2f}",
                (curve.best_threshold, curve.best_f1), xytext=(8, -30), textcoords="offset points", fontsize=8,
                color="#c00000")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("score threshold")
    ax.set_title(f"{title}, IoU 0.5", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return to_uri(fig)


def confusion(matrix: Any, *, normalised: bool) -> str:
    """The confusion matrix (rows: ground truth, columns: prediction; the last of each: background)."""
    names = list(matrix.classes) + ["background"]
    values = np.asarray(matrix.normalised() if normalised else matrix.counts, dtype=np.float64)
    k = len(names)
    side = min(9.0, 2.2 + 0.45 * k)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalised else max(1.0, values.max()))
    fig.colorbar(image, ax=ax, shrink=0.8)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if values[i, j]:
                    text = f"{values[i, j]:.2f}" if normalised else f"{int(values[i, j])}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] > 0.6 * (1 if normalised else values.max()) else "black")
        ax.set_xticks(range(k), names, rotation=90 if k > 6 else 0, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"{'normalised per true class' if normalised else 'counts'}; IoU {matrix.iou:g}, "
                 f"score >= {matrix.score_threshold:.2f}", fontsize=9)
    return to_uri(fig)


def error_analysis(errors: Any, title: str) -> str | None:
    """COCO error analysis of all classes: the precision after removing each kind of error, stacked."""
    if errors is None or not errors.curves:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    recall = np.asarray(errors.recall)
    below = np.zeros_like(recall)
    aps = errors.ap.get("all", {}).get("all", {})
    for stage, colour in zip(errors.stages, STAGE_COLOURS):
        curve = np.clip(np.asarray(errors.curves.get(stage, [below]), dtype=np.float64).reshape(-1), 0, 1)
        ax.fill_between(recall, below, np.maximum(curve, below), color=colour,
                        label=f"{stage} {aps.get(stage, math.nan):.3f}")
        below = np.maximum(curve, below)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return to_uri(fig)


def class_bars(classes: list[str], counts: dict[str, list[int]]) -> str:
    """Instances per class for each split."""
    fig = _figure(WIDTH, max(HEIGHT, 0.22 * len(classes) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / max(1, len(counts))
    y = np.arange(len(classes))
    for s, (name, values) in enumerate(counts.items()):
        ax.barh(y + s * height, values, height=height, label=name)
    ax.set_yticks(y + 0.4 - height / 2, classes, fontsize=7 if len(classes) > 20 else 8)
    ax.invert_yaxis()
    ax.set_xlabel("instances")
    ax.set_title("instances per class", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7)
    return to_uri(fig)


def histograms(values: dict[str, Sequence[float]], title: str, xlabel: str, *, log: bool = False,
               bins: int = 30) -> str:
    """Overlaid histograms of one quantity for each split (as densities, so splits of any size compare)."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    data = [np.asarray(v, dtype=np.float64) for v in values.values() if len(v)]
    if data:
        everything = np.concatenate(data)
        everything = everything[everything > 0] if log else everything
        if everything.size:
            lo, hi = float(everything.min()), float(everything.max())
            edges = (np.geomspace(max(lo, 1e-3), max(hi, lo * 1.01 + 1e-3), bins + 1) if log
                     else np.linspace(lo, hi if hi > lo else lo + 1, bins + 1))
            for name, v in values.items():
                if len(v):
                    ax.hist(v, bins=edges, density=True, alpha=0.55, label=name)
            if log:
                ax.set_xscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    if len(values) > 1:
        ax.legend(fontsize=7)
    return to_uri(fig)


def centres(points: dict[str, tuple[Sequence[float], Sequence[float]]]) -> str:
    """Where object centres fall, in image-relative coordinates (0..1), one 2-D histogram per split."""
    fig = _figure(WIDTH, HEIGHT)
    for n, (name, (x, y)) in enumerate(points.items(), 1):
        ax = fig.add_subplot(1, len(points), n)
        ax.hist2d(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), bins=24,
                  range=[[0, 1], [0, 1]], cmap="viridis")
        ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.set_title(f"object centres ({name})", fontsize=9)
        ax.set_xlabel("x / width", fontsize=8)
        ax.set_ylabel("y / height", fontsize=8)
    return to_uri(fig)


def _legend(ax: Any, n: int) -> None:
    if n <= 12:
        ax.legend(fontsize=7, loc="lower left")
