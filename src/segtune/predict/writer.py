"""Owns ``segtune predict``'s outputs: one picture per image plus a COCO-results JSON."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtune.fileio import write_json
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


def predict_to_folder(predictor: Predictor, inputs: list[str], out_dir: str | os.PathLike) -> PredictSummary:
    """Predict on files, folders or globs; write pictures and ``predictions.json`` into ``out_dir``.

    ``predictions.json`` is a COCO results list; each entry also has ``file_name`` (the input path)
    and ``category_name``. ``image_id`` is the input's position in the expanded list.
    """
    paths = expand_inputs(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
