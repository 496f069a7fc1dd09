"""Owns the built-in outputs of a prediction run, one sink each: COCO results, pictures, instance-mask PNGs,
YOLO labels and crops (the annotated video is in :mod:`segtune.predict.video`).

Each is registered in :data:`~segtune.predict.pipeline.SINKS` under its ``name``. :func:`coco_entries` is
the one place a model's labels become the data set's category ids and the prediction's class names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segtune.fileio import atomic_write, make_folder, write_json, write_text
from segtune.predict.pipeline import BOTH, FRAME, IMAGE, SINKS, Item, RunContext, Sink, Stream
from segtune.predict.visualise import save_png

logger = logging.getLogger(__name__)

RESULTS_FILE = "predictions.json"
#: Images between two rewrites of the results file (so it is valid whenever a long run stops).
SAVE_EVERY = 50
#: Most points a YOLO-seg polygon keeps (the outline is sampled evenly down to this).
MAX_POLYGON_POINTS = 200


def picture_path(out_dir: Path, name: str) -> Path:
    """Where the picture of the image with output name ``name`` goes; its presence marks the image done."""
    return out_dir / f"{name}.png"


def frames_file(out_dir: Path, stream: Stream) -> Path:
    """A video's per-frame COCO results: ``<stem>.frames.json``."""
    return out_dir / f"{stream.name}.frames.json"


def coco_entries(item: Item, predictor: Any) -> list[dict[str, Any]]:
    """COCO results entries of ``item``'s prediction, as ``segtune predict`` writes them.

    ``category_id`` is the data set's id of each model label (``predictor.category_id``), ``category_name``
    the prediction's ``names`` (so a stage that renames classes is seen), ``file_name`` the input path; a
    video frame's entries also get ``frame`` and ``time_s``.
    """
    pred = item.prediction
    entries = pred.to_coco(item.image_id, predictor.mask_threshold)
    frame = {} if item.frame is None else {"frame": item.frame, "time_s": round(item.time_s, 3)}
    for entry, name in zip(entries, pred.names):
        label = entry["category_id"]
        entry.update(frame, file_name=str(item.path), category_name=name, category_id=predictor.category_id(label))
    return entries


def _load_previous(path: Path) -> list[dict[str, Any]]:
    """The results a previous run into the same folder wrote (none when absent or unreadable)."""
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return previous if isinstance(previous, list) else []


@SINKS.register("results")
class CocoResults(Sink):
    """``predictions.json`` (COCO results of the images, by ``image_id``; an earlier run's results of the
    images it did are kept), rewritten every ``save_every`` images so it is valid whenever a long run stops;
    and ``<stem>.frames.json`` per video, written when the video is done.

    Args:
        save_every: images between two rewrites of ``predictions.json``.
        takes: the kinds of item written (:data:`IMAGE`, :data:`FRAME`); without images no
            ``predictions.json`` is written.
    """

    name = "results"

    def __init__(self, save_every: int = SAVE_EVERY, *, takes: frozenset[str] = BOTH) -> None:
        self.save_every = max(1, int(save_every))
        self.takes = frozenset(takes)

    def start(self, context: RunContext) -> None:
        super().start(context)
        self.file = context.out_dir / RESULTS_FILE
        resumed = context.resumed
        previous = _load_previous(self.file) if resumed else []
        # Only the entries of images still done (their pictures exist) and still the same file at that position.
        self.results = [r for r in previous if isinstance(r, dict) and isinstance(r.get("image_id"), int)
                        and r["image_id"] in resumed and r.get("file_name") == resumed[r["image_id"]]]
        self.frames: list[dict[str, Any]] = []
        self._since_save = 0

    def open(self, stream: Stream) -> None:
        self.frames = []

    def write(self, item: Item) -> None:
        entries = coco_entries(item, self.context.predictor)
        if item.kind == FRAME:
            self.frames.extend(entries)
            return
        self.results.extend(entries)
        self._since_save += 1
        if self._since_save >= self.save_every:
            write_json(self.file, sorted(self.results, key=lambda r: r["image_id"]))
            self._since_save = 0

    def close(self, stream: Stream, complete: bool) -> None:
        if stream.kind == FRAME and complete:
            self.written.append(write_json(frames_file(self.context.out_dir, stream), self.frames))
        self.frames = []

    def finish(self) -> list[Path]:
        if IMAGE in self.takes:
            self.results.sort(key=lambda r: r["image_id"])
            self.written.insert(0, write_json(self.file, self.results))
        return self.written


@SINKS.register("pictures")
class Pictures(Sink):
    """``<name>.png``: each image with its masks, boxes, class names and scores drawn (written last for an
    image: a picture means the image is done, and a resumed run skips it)."""

    name = "pictures"
    takes = frozenset({IMAGE})

    def write(self, item: Item) -> None:
        path = picture_path(self.context.out_dir, item.name)
        save_png(item.prediction.draw(), path)
        self.written.append(path)

    def finish(self) -> list[Path]:
        return sorted(self.written)


def instance_png(masks: Any, height: int, width: int) -> Image.Image:
    """One PNG of instance ids: pixel k is instance k (1-based, in score order), 0 background; the
    Penn-Fudan mask layout, so predictions can be corrected and trained on. 16-bit past 255 instances."""
    ids = np.zeros((height, width), dtype=np.uint16 if masks is not None and len(masks) > 255 else np.uint8)
    if masks is not None:
        for k in range(len(masks) - 1, -1, -1):  # the highest score wins where masks overlap
            ids[masks[k].numpy()] = k + 1
    return Image.fromarray(ids)


@SINKS.register("masks")
class InstanceMasks(Sink):
    """``masks/<name>.png`` per image: pixel k = instance k (:func:`instance_png`)."""

    name = "masks"
    takes = frozenset({IMAGE})

    def start(self, context: RunContext) -> None:
        super().start(context)
        self.folder = make_folder(context.out_dir / "masks", what="masks folder")

    def write(self, item: Item) -> None:
        png = instance_png(item.prediction.masks, *item.image.shape[1:])
        path = atomic_write(self.folder / f"{item.name}.png", lambda f: png.save(f, format="PNG"), binary=True)
        self.written.append(path)


def mask_polygon(mask: np.ndarray) -> list[tuple[float, float]]:
    """The outline of a binary mask's largest part as ``(x, y)`` pixel points (contourpy's iso-line at 0.5,
    the contour tracer matplotlib uses), sampled down to :data:`MAX_POLYGON_POINTS`; empty for an empty mask."""
    import contourpy

    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float64), 1)  # closes outlines that touch the image's edge
    lines = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate).lines(0.5)
    line = max(lines, key=len)
    if len(line) > MAX_POLYGON_POINTS:
        line = line[np.linspace(0, len(line) - 1, MAX_POLYGON_POINTS).round().astype(int)]
    return [(float(x) - 1, float(y) - 1) for x, y in line]


def yolo_lines(pred: Any, height: int, width: int) -> list[str]:
    """YOLO label lines of ``pred``: ``class x1 y1 x2 y2 ...`` (a normalised outline) for masks, else
    ``class cx cy w h``; classes 0-based, as YOLO's ``names``."""
    lines = []
    for k, (box, label) in enumerate(zip(pred.boxes.tolist(), pred.labels.tolist())):
        if pred.masks is not None:
            points = mask_polygon(pred.masks[k].numpy())
            if len(points) >= 3:
                coords = (f"{min(max(x / width, 0), 1):.6f} {min(max(y / height, 0), 1):.6f}" for x, y in points)
                lines.append(f"{label - 1} {' '.join(coords)}")
            continue
        x0, y0, x1, y1 = box
        lines.append(f"{label - 1} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                     f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")
    return lines


@SINKS.register("labels")
class YoloLabels(Sink):
    """``labels/<name>.txt`` per image: YOLO(-seg) label lines (:func:`yolo_lines`), so predictions train again."""

    name = "labels"
    takes = frozenset({IMAGE})

    def write(self, item: Item) -> None:
        lines = yolo_lines(item.prediction, *item.image.shape[1:])
        path = self.context.out_dir / "labels" / f"{item.name}.txt"
        self.written.append(write_text(path, "".join(f"{line}\n" for line in lines)))


@SINKS.register("crops")
class Crops(Sink):
    """``crops/<class>/<name>_<k>.jpg``: each detection's box cut out of its image (k in score order)."""

    name = "crops"
    takes = frozenset({IMAGE})

    def write(self, item: Item) -> None:
        image, pred = item.image, item.prediction
        height, width = image.shape[1:]
        for k, (box, name) in enumerate(zip(pred.boxes.tolist(), pred.names)):
            x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
            x1, y1 = min(width, max(x0 + 1, int(round(box[2])))), min(height, max(y0 + 1, int(round(box[3]))))
            crop = Image.fromarray(image[:, y0:y1, x0:x1].permute(1, 2, 0).numpy())
            folder = make_folder(self.context.out_dir / "crops" / name.replace("/", "_"), what="crops folder")
            target = folder / f"{item.name}_{k}.jpg"
            atomic_write(target, lambda f, im=crop: im.save(f, format="JPEG", quality=90), binary=True)
            self.written.append(target)

