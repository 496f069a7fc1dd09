"""Owns the data doctor: read a whole data set once, count what is in it and list every defect found.

``segtune data check`` prints the report and ``segtune train`` runs the same scan first (and stops on
its errors), so a bad file is named before any time is spent on a model. The format readers find
most defects themselves and report them as :class:`~segtune.data.base.Problem`; this module collects
them, decodes every image, and adds the checks that need the whole picture (counts, tiny boxes).
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from segtune.config import resolve_data_path
from segtune.data.base import ERROR, WARNING, DetectionDataset, Problem, ProblemSink
from segtune.data.build import open_dataset
from segtune.data.check_cache import fingerprint, load_report, save_report
from segtune.data.shapes import SAMPLE, SAMPLE_PER_CHUNK, box_rows, describe, even_sample
from segtune.errors import DatasetError
from segtune.machine import track

logger = logging.getLogger(__name__)

#: Lines shown per kind of problem before "... and N more".
MAX_LINES_PER_KIND = 20
#: Error lines quoted in the message that stops training.
MAX_ERRORS_QUOTED = 5
_MAX_EMPTY_NAMES = 5
_PROGRESS_FROM = 100  # a scan of fewer images takes about a second: no progress lines
_BAR_WIDTH = 40


@dataclass
class CheckReport:
    """What the data doctor found in one data set.

    Attributes:
        path: the data set (folder or annotation file) as opened.
        format: the format it was read as (``masks``, ``coco``, ...).
        classes: class names, label 1 first.
        images: images in the data set (those the reader could pair with annotations).
        instances: instances over all readable images, crowd regions included.
        crowd: how many of ``instances`` are crowd regions.
        instances_per_image: ``(min, median, max)`` over readable images; None without any.
        class_counts: instances per class name, in class order (0 for a class never used).
        empty_images: names of the images without any object (negatives: fine, but worth knowing).
        unreadable: images that could not be read with their annotations (see ``problems``).
        height_range, width_range: ``(smallest, largest)`` image height and width in pixels.
        min_box_size: the threshold boxes were checked against (pixels).
        small_boxes: boxes narrower or lower than ``min_box_size``.
        problems: every defect, in the order found; ``error`` ones stop training.
        instance_counts: instances (crowd regions excluded) per image name, for judging a split.
        box_sample: an even sample of the boxes, ``[image, width, height, image width, image height]``
            each (:mod:`segtune.data.shapes`), for fitting a recipe to the data.
    """

    path: str
    format: str
    classes: list[str]
    images: int = 0
    instances: int = 0
    crowd: int = 0
    instances_per_image: tuple[int, float, int] | None = None
    class_counts: dict[str, int] = field(default_factory=dict)
    empty_images: list[str] = field(default_factory=list)
    instance_counts: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0
    height_range: tuple[int, int] | None = None
    width_range: tuple[int, int] | None = None
    min_box_size: float = 0.0
    small_boxes: int = 0
    problems: list[Problem] = field(default_factory=list)
    box_sample: list[list[Any]] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != ERROR]

    @property
    def ok(self) -> bool:
        """True when nothing would stop training (warnings allowed)."""
        return not self.errors

    def format_text(self) -> str:
        """The report as plain text: summary, class histogram, then problems grouped by kind."""
        lines = [f"data set: {self.path} ({self.format} format)"]
        readable = self.images - self.unreadable
        lines.append(f"images: {self.images}" + (f" ({self.unreadable} unreadable)" if self.unreadable else ""))
        lines.append(f"instances: {self.instances}" + (f" ({self.crowd} crowd)" if self.crowd else ""))
        if self.instances_per_image is not None:
            low, median, high = self.instances_per_image
            lines.append(f"instances per image: min {low}, median {median:g}, max {high}")
        empty = f"images without objects: {len(self.empty_images)}"
        if self.empty_images:
            shown = ", ".join(self.empty_images[:_MAX_EMPTY_NAMES])
            more = len(self.empty_images) - _MAX_EMPTY_NAMES
            empty += f" ({shown}{f', ... and {more} more' if more > 0 else ''})"
        lines.append(empty)
        if self.height_range and self.width_range and readable:
            lines.append(f"image sizes: width {self.width_range[0]}..{self.width_range[1]}, "
                         f"height {self.height_range[0]}..{self.height_range[1]} px")
        lines.append(f"boxes smaller than {self.min_box_size:g} px: {self.small_boxes}")
        shapes = describe(self.box_sample)
        if shapes:
            lines.append(shapes)
        lines.append(f"classes ({len(self.class_counts)}):")
        lines.extend(_histogram(self.class_counts))
        lines.append("")
        errors, warnings = self.errors, self.warnings
        if not self.problems:
            lines.append("problems: none")
        else:
            lines.append(f"problems: {len(errors)} error(s), {len(warnings)} warning(s)")
            for severity, group in ((ERROR, errors), (WARNING, warnings)):
                for kind, items in _by_kind(group).items():
                    lines.append(f"{severity.upper()} {kind} ({len(items)}):")
                    lines.extend(f"  {p}" for p in items[:MAX_LINES_PER_KIND])
                    if len(items) > MAX_LINES_PER_KIND:
                        lines.append(f"  ... and {len(items) - MAX_LINES_PER_KIND} more")
        lines.append("")
        lines.append(f"result: {len(errors)} error(s); training would stop on them" if errors
                     else "result: OK" + (f" ({len(warnings)} warning(s))" if warnings else ""))
        return "\n".join(lines)


def _histogram(counts: dict[str, int]) -> list[str]:
    if not counts:
        return []
    width = max(len(name) for name in counts)
    top = max(counts.values()) or 1
    digits = len(str(top))
    return [f"  {name:<{width}}  {n:>{digits}}  {'#' * max(1 if n else 0, round(n / top * _BAR_WIDTH))}"
            for name, n in counts.items()]


def _by_kind(problems: Iterable[Problem]) -> dict[str, list[Problem]]:
    groups: dict[str, list[Problem]] = {}
    for p in problems:
        groups.setdefault(p.kind, []).append(p)
    return groups


def _kind_of(message: str) -> str:
    """A short kind for a reader's DatasetError message (the readers word these consistently)."""
    text = message.lower()
    if "truncated" in text or "corrupt" in text:
        return "truncated"
    if "not a readable image" in text or "cannot identify" in text:
        return "unreadable"
    if "not found" in text or "missing" in text:
        return "missing-file"
    if re.search(r"\d+x\d+\b.*\b\d+x\d+", text) or "size" in text:
        return "size-mismatch"
    return "bad-annotation"


def _split_message(message: str, candidates: Iterable[str]) -> tuple[str, str]:
    """``(path, rest)`` when the message starts with one of the files it may be about."""
    for path in candidates:
        if message.startswith(path + ": "):
            return path, message[len(path) + 2:]
    return "", message


def check_dataset(data_cfg: Any, *, progress: bool = True) -> CheckReport:
    """Read every image and annotation of the data set ``data_cfg`` describes and report on it.

    Args:
        data_cfg: a ``DataConfig`` section (path, format and the format's settings, ``min_box_size``).
        progress: show a progress bar (a terminal) or log a line every so often while scanning.

    Returns:
        The report; ``report.ok`` is False when something would stop training.

    Raises:
        DatasetError: the data set cannot be opened at all (no such folder, format not recognised,
            an annotation file that is not valid JSON): there is nothing to scan.
    """
    return open_and_check(data_cfg, progress=progress)[1]


def open_and_check(data_cfg: Any, *, progress: bool = True) -> tuple[DetectionDataset, CheckReport]:
    """Open the data set once and check it (see :func:`check_dataset`): the data set and the report.

    The data set comes back with every annotation (``keep_crowd``), no transforms, and a sink that
    logs each further problem once, ready to be split into views (:meth:`DetectionDataset.view`).
    """
    dataset = open_dataset(data_cfg, keep_crowd=True, sink=ProblemSink(collect=True))
    return dataset, check_opened(dataset, data_cfg, progress=progress)


def check_opened(dataset: DetectionDataset, data_cfg: Any, *, progress: bool = True) -> CheckReport:
    """Check a data set that is already open (the problems its reader collected while opening come first).

    Afterwards the data set logs each further problem once instead of collecting it.
    """
    sink = dataset.sink if dataset.sink.collect else ProblemSink(collect=True)
    dataset.sink = sink
    path = str(resolve_data_path(data_cfg.path))  # the data set as the user gave it (a COCO file, not its images)
    key = fingerprint(dataset, data_cfg, path) if getattr(data_cfg, "check_cache", False) else None
    cached, where = load_report(key, CheckReport) if key else (None, None)
    if cached is not None:
        logger.info("data check: %s is unchanged since its last check; that report is used (%s; --check-cache "
                    "false checks again)", path, where)
        cached.path = path
        dataset.sink = ProblemSink()
        return cached
    report = CheckReport(path=path, format=dataset.format, classes=list(dataset.classes),
                         min_box_size=float(data_cfg.min_box_size))
    per_image = _scan(dataset, report, progress=progress)
    # The reader's problems (construction, then per image) first, in the order found, then the scan's own.
    report.problems = sink.problems + per_image + report.problems
    if key:
        save_report(key, report)
    dataset.sink = ProblemSink()
    return report


#: Images one worker checks at a time; the chunks' results are merged in order, so the report is the
#: same whatever the number of workers.
_CHUNK = 256
#: Below this many images the check runs in this process (starting workers would cost more than it saves).
_PARALLEL_FROM = 1000


@dataclass
class _Part:
    """What one chunk of images contributes to the report."""

    report: CheckReport
    labels: Counter[int] = field(default_factory=Counter)
    per_image: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    boxes: list[list[Any]] = field(default_factory=list)
    reader_problems: list[Problem] = field(default_factory=list)


def _scan_chunk(dataset: DetectionDataset, indices: range, min_box_size: float) -> _Part:
    # The same data set with a sink of its own: the reader's per-image problems of this chunk stay together.
    view = copy.copy(dataset)  # (a view() would check every file name again, per chunk)
    view.sink = ProblemSink(collect=True)
    part = _Part(CheckReport(path="", format="", classes=[], min_box_size=min_box_size))
    report = part.report
    for i in indices:
        try:
            image, target = view.load(i)
        except DatasetError as e:
            message = str(e)
            path, rest = _split_message(message, (view._annotation_source(i), str(view.image_path(i))))
            report.problems.append(Problem(ERROR, _kind_of(rest), path or str(view.image_path(i)), rest))
            report.unreadable += 1
            continue
        part.heights.append(image.shape[0])
        part.widths.append(image.shape[1])
        count = len(target["labels"])
        crowd = int(target["iscrowd"].sum())
        part.per_image.append(count)
        report.instances += count
        report.crowd += crowd
        report.instance_counts[view.files[i]] = count - crowd
        part.labels.update(int(v) for v in target["labels"])
        part.boxes += box_rows(view.files[i], target, image.shape[1], image.shape[0])
        if count == 0:
            report.empty_images.append(view.files[i])
        _check_box_sizes(view, i, target, report)
    part.reader_problems = view.sink.problems
    part.boxes = even_sample(part.boxes, SAMPLE_PER_CHUNK)
    return part


def scan_workers() -> int:
    """Processes the data doctor reads images with (one per CPU core, at most 8)."""
    return max(1, min(8, os.cpu_count() or 1))


#: The data set the forked scan workers read (inherited, never pickled: a large COCO set stays shared).
_SHARED: DetectionDataset | None = None


def _init_worker() -> None:
    torch.set_num_threads(1)  # the workers split the images; one thread each keeps them off each other's cores


def _scan_shared(job: tuple[range, float]) -> _Part:
    assert _SHARED is not None
    return _scan_chunk(_SHARED, *job)


def _scan_parts(dataset: DetectionDataset, chunks: list[range], min_box_size: float) -> Iterator[_Part]:
    """Each chunk's part, in chunk order: in forked worker processes when there are cores and images to
    spare (decoding and building targets is Python and small tensor ops: threads would wait on the GIL)."""
    global _SHARED
    workers = min(scan_workers(), len(chunks))
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        yield from (_scan_chunk(dataset, chunk, min_box_size) for chunk in chunks)
        return
    _SHARED = dataset
    try:
        with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
            yield from pool.imap(_scan_shared, [(chunk, min_box_size) for chunk in chunks])
    finally:
        _SHARED = None


def _scan(dataset: DetectionDataset, report: CheckReport, *, progress: bool) -> list[Problem]:
    """Read every image and annotation, in parallel chunks; returns the reader's per-image problems, in order."""
    n = len(dataset)
    report.images = n
    chunks = [range(start, min(n, start + _CHUNK)) for start in range(0, n, _CHUNK)]
    parts: Iterable[_Part] = _scan_parts(dataset, chunks, report.min_box_size) if n >= _PARALLEL_FROM else \
        (_scan_chunk(dataset, chunk, report.min_box_size) for chunk in chunks)
    if progress and n >= _PROGRESS_FROM and len(chunks) > 1:
        parts = track(parts, total=len(chunks), desc=f"checking {n} images ({_CHUNK} a chunk)",
                      every=max(1, len(chunks) // 5))
    parts = list(parts)
    labels: Counter[int] = Counter()
    per_image: list[int] = []
    heights: list[int] = []
    widths: list[int] = []
    reader_problems: list[Problem] = []
    boxes: list[list[Any]] = []
    for part in parts:
        got = part.report
        report.instances += got.instances
        report.crowd += got.crowd
        report.unreadable += got.unreadable
        report.small_boxes += got.small_boxes
        report.empty_images += got.empty_images
        report.instance_counts.update(got.instance_counts)
        report.problems += got.problems
        labels.update(part.labels)
        per_image += part.per_image
        heights += part.heights
        widths += part.widths
        boxes += part.boxes
        reader_problems += part.reader_problems
    report.box_sample = even_sample(boxes, SAMPLE)
    report.class_counts = {name: labels.get(k, 0) for k, name in enumerate(dataset.classes, 1)}
    outside = sorted(k for k in labels if not 1 <= k <= len(dataset.classes))
    if outside:  # a reader bug rather than a data defect, but the doctor should not hide it
        report.problems.append(Problem(ERROR, "unknown-label", report.path,
                                       f"labels {outside} are outside the {len(dataset.classes)} classes"))
    if per_image:
        report.instances_per_image = (min(per_image), statistics.median(per_image), max(per_image))
        report.height_range = (min(heights), max(heights))
        report.width_range = (min(widths), max(widths))
    return reader_problems


def _check_box_sizes(dataset: DetectionDataset, index: int, target: dict[str, Any], report: CheckReport) -> None:
    boxes = target["boxes"]
    if not len(boxes):
        return
    size = report.min_box_size
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    small = ((w < size) | (h < size)).nonzero().flatten().tolist()
    if not small:
        return
    report.small_boxes += len(small)
    shown = "; ".join(
        f"instance {k + 1} of {len(boxes)}: {float(w[k]):g}x{float(h[k]):g} px at "
        f"({', '.join(f'{float(v):g}' for v in boxes[k])})"
        for k in small[:5]
    )
    more = f"; ... and {len(small) - 5} more" if len(small) > 5 else ""
    source = dataset._annotation_source(index)
    # One annotation file for many images (COCO, LabelMe folders): say which image the boxes are in.
    image = "" if source == str(dataset.image_path(index)) else f"image {dataset.files[index]}: "
    report.problems.append(Problem(
        WARNING, "small-box", source,
        f"{image}{len(small)} box(es) narrower or lower than {size:g} px (data.min_box_size): {shown}{more}",
    ))


def raise_on_errors(report: CheckReport) -> None:
    """Raise :class:`DatasetError` when ``report`` has errors, quoting the first few verbatim.

    Raises:
        DatasetError: the message gives the error count, the first errors as ``path: message`` lines
            (as ``segtune data check`` prints them) and how to see the rest.
    """
    errors = report.errors
    if not errors:
        return
    quoted = "\n".join(f"  {p}" for p in errors[:MAX_ERRORS_QUOTED])
    more = len(errors) - MAX_ERRORS_QUOTED
    raise DatasetError(
        f"{report.path}: the data check found {len(errors)} error(s):\n{quoted}"
        + (f"\n  ... and {more} more" if more > 0 else "")
        + "\nrun 'segtune data check' with the same data settings for the full report"
    )
