"""Owns ``segtune predict``'s outputs: one picture per image plus a COCO-results JSON."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segtune.checkpoint import checkpoint_data, load_checkpoint
from segtune.data import open_dataset
from segtune.errors import CheckpointError, DatasetError
from segtune.fileio import atomic_write, make_folder, write_json, write_text
from segtune.models.exported import exported_format, read_sidecar
from segtune.predict.predictor import Predictor, expand_inputs, to_uint8_chw
from segtune.predict.video import is_video, predict_video
from segtune.predict.visualise import save_png
from segtune.runtime import track

logger = logging.getLogger(__name__)

RESULTS_FILE = "predictions.json"
#: Images between two rewrites of the results file (so it is valid whenever a long run stops).
SAVE_EVERY = 50


@dataclass
class PredictSummary:
    out_dir: Path
    pictures: list[Path]
    results_file: Path
    num_detections: int
    skipped: list[str] = field(default_factory=list)  # inputs that could not be read
    videos: list[Any] = field(default_factory=list)  # a VideoSummary per video predicted on


def _picture_names(paths: list[Path]) -> list[str]:
    """``<stem>.png`` for each input, made unique when two inputs share a stem."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        names.append(f"{p.stem}.png" if n == 0 else f"{p.stem}-{n + 1}.png")
    return names


def split_images(checkpoint: str | os.PathLike, split: str, *, data: str | None = None) -> list[Path]:
    """The image files of a run's ``train`` or ``test`` split, in the split's order.

    The run's data set is opened as it was trained (any format), and each format says where its
    images are: a COCO ``file_name`` under its image root, a YOLO ``images/`` path, a mask folder's
    ``PNGImages/``, a LabelMe ``imagePath``.

    Args:
        checkpoint: a ``.pt`` file or a run folder (its ``weights/best.pt``).
        data: the data set, if it moved since training (default: the path in the checkpoint).

    Raises:
        CheckpointError: the checkpoint holds no such split. DatasetError: the data set cannot be read
            or lacks a file of the split.
    """
    if exported_format(checkpoint):  # an exported model's split is its checkpoint's
        checkpoint = read_sidecar(checkpoint).get("checkpoint") or checkpoint
    ckpt = load_checkpoint(checkpoint)
    files = ckpt.get("split", {}).get(split)
    if files is None:
        raise CheckpointError(f"{ckpt['path']}: holds no '{split}' split (it has: "
                              f"{', '.join(sorted(ckpt.get('split', {}))) or 'none'})")
    dataset = open_dataset(checkpoint_data(ckpt, data, split), files=list(files))
    return [dataset.image_path(i) for i in range(len(dataset))]


def _load_previous(path: Path) -> list[dict[str, Any]]:
    """The results a previous run into the same folder wrote (none when absent or unreadable)."""
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return previous if isinstance(previous, list) else []


def instance_png(masks: Any, height: int, width: int) -> Image.Image:
    """One PNG of instance ids: pixel k is instance k (1-based, in score order), 0 background; the
    Penn-Fudan mask layout, so predictions can be corrected and trained on. 16-bit past 255 instances."""
    ids = np.zeros((height, width), dtype=np.uint16 if masks is not None and len(masks) > 255 else np.uint8)
    if masks is not None:
        for k in range(len(masks) - 1, -1, -1):  # the highest score wins where masks overlap
            ids[masks[k].numpy()] = k + 1
    return Image.fromarray(ids)


#: Most points a YOLO-seg polygon keeps (the outline is sampled evenly down to this).
MAX_POLYGON_POINTS = 200


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
                coords = " ".join(f"{min(max(x / width, 0), 1):.6f} {min(max(y / height, 0), 1):.6f}" for x, y in points)
                lines.append(f"{label - 1} {coords}")
            continue
        x0, y0, x1, y1 = box
        lines.append(f"{label - 1} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                     f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")
    return lines


def _write_crops(image: Any, pred: Any, folder: Path, stem: str) -> None:
    """Each detection's box cut out of ``image`` (uint8[3, H, W]) as ``folder/<class>/<stem>_<k>.jpg``."""
    height, width = image.shape[1:]
    for k, (box, name) in enumerate(zip(pred.boxes.tolist(), pred.names)):
        x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
        x1, y1 = min(width, max(x0 + 1, int(round(box[2])))), min(height, max(y0 + 1, int(round(box[3]))))
        crop = Image.fromarray(image[:, y0:y1, x0:x1].permute(1, 2, 0).numpy())
        target = make_folder(folder / name.replace("/", "_"), what="crops folder") / f"{stem}_{k}.jpg"
        atomic_write(target, lambda f, im=crop: im.save(f, format="JPEG", quality=90), binary=True)


def predict_to_folder(predictor: Predictor, inputs: list[str], out_dir: str | os.PathLike, *,
                      overwrite: bool = False, save_masks: bool = False, batch_size: int = 1,
                      save_every: int = SAVE_EVERY, vid_stride: int = 1, save_crops: bool = False,
                      save_txt: bool = False) -> PredictSummary:
    """Predict on files, folders or globs; write pictures and ``predictions.json`` into ``out_dir``.

    ``predictions.json`` is a COCO results list; each entry also has ``file_name`` (the input path)
    and ``category_name``. ``image_id`` is the input's position in the expanded list. For thousands of
    images: an unreadable file is skipped with one warning (and counted); an image whose picture is
    already in ``out_dir`` is skipped and its earlier results kept (``overwrite`` redoes it); the
    results file is rewritten atomically every ``save_every`` images, so it is valid whenever the
    run stops. ``save_masks``: ``masks/<name>.png`` of instance ids per image (see :func:`instance_png`).
    ``save_crops``: ``crops/<class>/<name>_<k>.jpg``, each detection's box cut out of the image.
    ``save_txt``: ``labels/<name>.txt``, YOLO labels (:func:`yolo_lines`), so predictions train again.
    Videos among the inputs go to :func:`~segtune.predict.video.predict_video` (every ``vid_stride``-th frame).
    """
    paths = expand_inputs(inputs)
    out = make_folder(out_dir, what="output folder (--out)")
    skipped: list[str] = []
    videos = []
    for video in [p for p in paths if is_video(p)]:
        try:
            videos.append(predict_video(predictor, video, out, vid_stride=vid_stride))
        except DatasetError as e:
            logger.warning("predict: skipped %s (%s)", video, e)
            skipped.append(str(video))
    paths = [p for p in paths if not is_video(p)]
    if save_masks:
        make_folder(out / "masks", what="masks folder")
    names = _picture_names(paths)
    previous = [] if overwrite else _load_previous(out / RESULTS_FILE)
    done = {i for i, name in enumerate(names) if not overwrite and (out / name).is_file()}
    results = [r for r in previous if r.get("image_id") in done and r.get("file_name") == str(paths[r["image_id"]])]
    pictures = [out / names[i] for i in sorted(done)]
    todo = [i for i in range(len(paths)) if i not in done]
    if done:
        logger.info("predict: %d of %d images already have pictures in %s: skipped (--overwrite redoes them)",
                    len(done), len(paths), out)
    batches = [todo[k:k + max(1, batch_size)] for k in range(0, len(todo), max(1, batch_size))]
    since_save = 0
    for batch in track(batches, total=len(batches), desc="predict", every=max(1, len(batches) // 20)):
        readable = []
        for i in batch:
            try:
                readable.append((i, to_uint8_chw(paths[i])))
            except DatasetError as e:
                logger.warning("predict: skipped %s (%s)", paths[i], e)
                skipped.append(str(paths[i]))
        if not readable:
            continue
        for (i, tensor), pred in zip(readable, predictor.predict_batch([t for _, t in readable])):
            for entry in pred.to_coco(i, predictor.mask_threshold):
                entry["file_name"] = str(paths[i])
                label = entry["category_id"]
                entry["category_name"] = predictor.name(label)
                entry["category_id"] = predictor.category_id(label)
                results.append(entry)
            if save_txt:
                lines = yolo_lines(pred, *tensor.shape[1:])
                write_text(out / "labels" / f"{Path(names[i]).stem}.txt", "".join(f"{line}\n" for line in lines))
            if save_crops:
                _write_crops(tensor, pred, out / "crops", Path(names[i]).stem)
            if save_masks:
                mask_png = instance_png(pred.masks, *tensor.shape[1:])
                atomic_write(out / "masks" / names[i], lambda f, im=mask_png: im.save(f, format="PNG"), binary=True)
            save_png(pred.draw(), out / names[i])  # last: a picture means this image is done
            pictures.append(out / names[i])
        since_save += len(readable)
        if since_save >= save_every:
            write_json(out / RESULTS_FILE, sorted(results, key=lambda r: r["image_id"]))
            since_save = 0
    results.sort(key=lambda r: r["image_id"])
    results_file = write_json(out / RESULTS_FILE, results)
    if skipped:
        logger.warning("predict: %d of %d inputs could not be read and were skipped", len(skipped),
                       len(paths) + len(videos) + len([s for s in skipped if is_video(s)]))
    logger.info("predicted %d images: %d detections above score %.2f", len(pictures), len(results),
                predictor.score_threshold)
    return PredictSummary(out_dir=out, pictures=sorted(pictures), results_file=results_file,
                          num_detections=len(results), skipped=skipped, videos=videos)
