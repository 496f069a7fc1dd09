"""Owns ``segtune predict``'s outputs: one picture per image plus a COCO-results JSON."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtune.checkpoint import checkpoint_data, load_checkpoint
from segtune.data import open_dataset
from segtune.errors import CheckpointError
from segtune.fileio import make_folder, write_json
from segtune.models.exported import exported_format, read_sidecar
from segtune.predict.predictor import Predictor, expand_inputs
from segtune.predict.visualise import save_png
from segtune.runtime import track

logger = logging.getLogger(__name__)

RESULTS_FILE = "predictions.json"


@dataclass
class PredictSummary:
    out_dir: Path
    pictures: list[Path]
    results_file: Path
    num_detections: int


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


def predict_to_folder(predictor: Predictor, inputs: list[str], out_dir: str | os.PathLike) -> PredictSummary:
    """Predict on files, folders or globs; write pictures and ``predictions.json`` into ``out_dir``.

    ``predictions.json`` is a COCO results list; each entry also has ``file_name`` (the input path)
    and ``category_name``. ``image_id`` is the input's position in the expanded list.
    """
    paths = expand_inputs(inputs)
    out = make_folder(out_dir, what="output folder (--out)")
    results: list[dict[str, Any]] = []
    pictures = []
    for image_id, (path, name) in enumerate(track(list(zip(paths, _picture_names(paths))), total=len(paths),
                                                  desc="predict")):
        pred = predictor(path)
        for entry in pred.to_coco(image_id, predictor.mask_threshold):
            entry["file_name"] = str(path)
            label = entry["category_id"]
            entry["category_name"] = predictor.name(label)
            entry["category_id"] = predictor.category_id(label)
            results.append(entry)
        save_png(pred.draw(), out / name)
        pictures.append(out / name)
    results_file = write_json(out / RESULTS_FILE, results)
    logger.info("predicted %d images: %d detections above score %.2f", len(paths), len(results),
                predictor.score_threshold)
    return PredictSummary(out_dir=out, pictures=pictures, results_file=results_file, num_detections=len(results))
