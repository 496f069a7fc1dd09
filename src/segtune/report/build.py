"""Owns assembling a report: what goes into each section, from a :class:`ReportInputs` to the HTML page.

A training run's report has every section; ``evaluate --report`` has the quality, labels and
gallery sections only (no training history). The numbers come from
:mod:`segtune.evaluation.analysis`, the plots from :mod:`segtune.report.figures`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segtune.evaluation.analysis import Analysis, analyse
from segtune.fileio import write_text
from segtune.report import figures, page
from segtune.report.gallery import MAX_GALLERY, build_gallery
from segtune.report.labels import LabelStats, label_stats

logger = logging.getLogger(__name__)

_TYPE_TITLES = {"bbox": "boxes", "segm": "masks", "keypoints": "keypoints"}


@dataclass
class ReportInputs:
    """Everything a report shows. Datasets are segtune data sets opened without transforms.

    Attributes:
        title: the page's heading (the run folder's name, or the checkpoint's).
        classes: class names in label order.
        test_dataset: the evaluated images (the test split), for the gallery and its label statistics.
        gt, results: the COCO ground truth of ``test_dataset`` and the scored detections (category ids).
        iou_types: what was scored (``bbox``, ``segm``, ``keypoints``).
        train_dataset: the training images, for their label statistics (None: not shown).
        history, steps: the per-epoch records (``metrics.json``) and per-step losses (``steps.csv``).
        best_epoch: the epoch whose model made ``results``.
        facts: ``(name, value)`` rows of the run summary (data set, split, machine, times).
        config_text: the run's ``config.yaml``.
    """

    title: str
    classes: list[str]
    test_dataset: Any
    gt: dict[str, Any]
    results: list[dict[str, Any]]
    iou_types: list[str]
    train_dataset: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    facts: list[tuple[str, Any]] = field(default_factory=list)
    config_text: str | None = None


def build_html(inputs: ReportInputs) -> str:
    """The report page for ``inputs``."""
    start = time.perf_counter()
    analyses = {t: analyse(inputs.gt, inputs.results, t) for t in inputs.iou_types if t in ("bbox", "segm")}
    sections: list[tuple[str, str, str]] = [("run", "The run", _run_section(inputs, analyses))]
    if inputs.history:
        sections.append(("training", "Training", _training_section(inputs)))
    for iou_type, analysis in analyses.items():
        sections.append((f"quality-{iou_type}", f"Quality: {_TYPE_TITLES[iou_type]}", _quality_section(analysis)))
    sections.append(("labels", "Labels", _labels_section(inputs)))
    main = analyses.get("segm") or analyses.get("bbox")
    if main is not None:
        sections.append(("gallery", "Test images, worst first", _gallery_section(inputs, main)))
    subtitle = f"segtune report, written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    logger.debug("report built in %.1f s", time.perf_counter() - start)
    return page.page(inputs.title, subtitle, sections)


def write_report(inputs: ReportInputs, path: str | Path) -> Path:
    """Write the report page to ``path`` atomically; returns the path."""
    return write_text(path, build_html(inputs))


def _run_section(inputs: ReportInputs, analyses: dict[str, Analysis]) -> str:
    facts = list(inputs.facts)
    if inputs.best_epoch is not None:
        facts.append(("best epoch", inputs.best_epoch))
    body = page.table(["", ""], facts)
    best = next((r for r in inputs.history if r.get("epoch") == inputs.best_epoch), None)
    metrics = best["metrics"] if best else {}
    if metrics:
        names = list(next(iter(metrics.values())))
        body += "<h3>COCO metrics of the best epoch</h3>" + page.table(
            ["", *names], [[_TYPE_TITLES.get(t, t), *[m.get(n, -1.0) for n in names]] for t, m in metrics.items()])
    main = analyses.get("segm") or analyses.get("bbox")
    if main is not None and main.thresholds.thresholds:
        th = main.thresholds
        body += (f'<p class="hint">Best F1 ({_TYPE_TITLES[main.iou_type]}, IoU 0.5): {th.best_f1:.3f} at score '
                 f"{th.best_threshold:.2f} (precision {th.best_precision:.3f}, recall {th.best_recall:.3f}): "
                 f"<code>segtune predict ... --score-threshold {th.best_threshold:.2f}</code></p>")
    if inputs.config_text:
        body += f"<details><summary>config.yaml</summary><pre>{page.esc(inputs.config_text)}</pre></details>"
    return body


def _training_section(inputs: ReportInputs) -> str:
    history, steps = inputs.history, inputs.steps
    body = page.grid(page.figure(figures.step_losses(steps), "loss terms per optimiser step: faint raw, bold "
                                                             "moving average (log scale)"),
                     page.figure(figures.learning_rate(steps, history), "learning rate"))
    if len(history) < 2:  # one point a curve says nothing: the table of the run section has its numbers
        return body + '<p class="note">One epoch: no curves per epoch (its AP is in the table above).</p>'
    return body + page.grid(
        page.figure(figures.epoch_losses(history), "loss terms per epoch (dashed: validation loss)"),
        page.figure(figures.ap_per_epoch(history, inputs.best_epoch), "AP, AP50, AP75 per epoch (dotted: the best "
                                                                      "epoch)"))


def _quality_section(analysis: Analysis) -> str:
    name = _TYPE_TITLES[analysis.iou_type]
    th = analysis.thresholds
    body = page.grid(
        page.figure(figures.pr_curves(analysis.pr, 0.5, f"precision-recall, {name}"),
                    "COCO's interpolated precision at each recall (its precision array); legend: AP"),
        page.figure(figures.pr_curves(analysis.pr, 0.75, f"precision-recall, {name}"), ""),
        page.figure(figures.threshold_curves(th, f"precision, recall, F1 against score, {name}"),
                    "detections scoring at least the threshold, matched to ground truth of their class"),
    )
    body += "<h3>Confusion matrix</h3>" + page.grid(
        page.figure(figures.confusion(analysis.confusion, normalised=False),
                    "rows: the true class (last: background, i.e. spurious detections); columns: the "
                    "predicted class (last: background, i.e. missed objects)"),
        page.figure(figures.confusion(analysis.confusion, normalised=True), "each row divided by its sum"),
    )
    errors = analysis.errors
    if errors is not None:
        body += ("<h3>COCO error analysis</h3><p class=\"note\">AP (area under the PR curve) as each kind of error "
                 "is forgiven in turn: C75, C50: IoU 0.75, 0.5; Loc: IoU 0.1 (poorly placed boxes forgiven); Sim: "
                 "confusion with classes of the same super-category forgiven; Oth: any class confusion forgiven; "
                 "BG: detections on background forgiven; FN: missed objects too (1.0).</p>")
        body += page.grid(page.figure(figures.error_analysis(errors, f"error analysis, {name}, all classes"), ""))
        rows = []
        for area in ("all", "small", "medium", "large"):
            for cls, aps in errors.ap.get(area, {}).items():
                rows.append([area, "all classes" if cls == "all" else cls, *[aps.get(s, -1.0) for s in errors.stages]])
        body += page.table(["objects", "class", *errors.stages], rows)
    return body


def _labels_section(inputs: ReportInputs) -> str:
    splits: dict[str, LabelStats] = {}
    if inputs.train_dataset is not None:
        splits["train"] = label_stats(inputs.train_dataset, inputs.classes)
    splits["test"] = label_stats(inputs.test_dataset, inputs.classes)
    rows = [[name, s.images, s.sampled, s.instances, f"{s.instances / max(1, s.sampled):.2f}"]
            for name, s in splits.items()]
    body = page.table(["split", "images", "images read", "instances", "per image"], rows)
    if any(s.sampled < s.images for s in splits.values()):
        body += '<p class="note">Large splits are sampled evenly for these statistics.</p>'
    body += page.grid(
        page.figure(figures.class_bars(inputs.classes, {n: s.per_class for n, s in splits.items()}),
                    "instances per class"),
        page.figure(figures.histograms({n: s.per_image for n, s in splits.items()}, "instances per image",
                                       "instances", bins=20), "instances per image (density)"),
        page.figure(figures.histograms({n: s.box_sizes for n, s in splits.items()}, "box size",
                                       "sqrt(width x height), px", log=True), "box sizes (density, log scale)"),
        page.figure(figures.histograms({n: s.aspect_ratios for n, s in splits.items()}, "box aspect ratio",
                                       "height / width", log=True), "box shapes (density, log scale)"),
        page.figure(figures.centres({n: (s.centres_x, s.centres_y) for n, s in splits.items()}),
                    "where box centres fall in their images"),
    )
    return body


def _gallery_section(inputs: ReportInputs, analysis: Analysis) -> str:
    threshold = analysis.thresholds.best_threshold if analysis.thresholds.thresholds else 0.5
    items, fps, misses = build_gallery(inputs.test_dataset, inputs.gt, inputs.results, analysis.images, threshold)
    shown = len(items)
    note = (f"Sorted by per-image F1 ({_TYPE_TITLES[analysis.iou_type]}, IoU 0.5, detections scoring at least "
            f"{threshold:.2f}, the best-F1 threshold), worst first; ties: more mistakes first. Left: ground truth "
            "(green); right: detections (blue: matched, red: false positive).")
    if shown < len(analysis.images):
        note += f" The {shown} worst of {len(analysis.images)} images are shown (at most {MAX_GALLERY})."
    return (page.gallery(items, note)
            + "<h3>Worst false positives</h3>" + page.crops(fps, "no false positives above the threshold")
            + "<h3>Missed objects, largest first</h3>" + page.crops(misses, "no missed objects"))
