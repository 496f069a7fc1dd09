"""Owns ``segtune predict``'s run over files, folders and globs: the sources, stages and sinks put together
(:mod:`segtune.predict.pipeline`) and the summary of what was written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segtune.errors import DatasetError
from segtune.fileio import make_folder
from segtune.predict.pipeline import SINKS, STAGES, Pipeline, RunContext, Sink, Stage, build_units
from segtune.predict.predictor import Predictor, expand_inputs
from segtune.predict.sinks import (MAX_POLYGON_POINTS, RESULTS_FILE, SAVE_EVERY, CocoResults, Pictures,
                                   instance_png, mask_polygon, picture_path, yolo_lines)
from segtune.predict.sources import ImageStream, split_images
from segtune.predict.video import AnnotatedVideo, is_video, run_video

logger = logging.getLogger(__name__)

# Kept importable from here, where they were defined before the pipeline's modules.
__all__ = ["MAX_POLYGON_POINTS", "RESULTS_FILE", "SAVE_EVERY", "PredictSummary", "instance_png", "mask_polygon",
           "predict_to_folder", "split_images", "yolo_lines"]

#: The sinks a flag turns on, in the order they write an image.
OPTIONAL_SINKS = ("masks", "labels", "crops")
#: The sinks every run has.
ALWAYS_SINKS = ("results", "video", "pictures")


@dataclass
class PredictSummary:
    out_dir: Path
    pictures: list[Path]
    results_file: Path
    num_detections: int
    skipped: list[str] = field(default_factory=list)  # inputs that could not be read
    videos: list[Any] = field(default_factory=list)  # a VideoSummary per video predicted on


def choose_sinks(extra: Sequence[Sink | str], *, save_masks: bool, save_txt: bool, save_crops: bool,
                 save_every: int) -> tuple[CocoResults, Pictures, list[Sink]]:
    """The run's sinks: COCO results, the ones the flags turn on, ``extra`` (instances or registered names; a
    built-in name turns that sink on), the annotated video, and the pictures last (a picture marks an image
    done). Returns the results and pictures sinks (the summary reads them) and the list."""
    on = {"masks": save_masks, "labels": save_txt, "crops": save_crops}
    rest = []
    for sink in extra:
        if isinstance(sink, str) and sink in on:
            on[sink] = True
        elif not (isinstance(sink, str) and sink in ALWAYS_SINKS):
            rest.append(sink)
    results, pictures = CocoResults(save_every), Pictures()
    chosen = [SINKS.get(name)() for name in OPTIONAL_SINKS if on[name]]
    return results, pictures, [results, *chosen, *build_units(rest, SINKS), AnnotatedVideo(), pictures]


def predict_to_folder(predictor: Predictor, inputs: list[str], out_dir: str | os.PathLike, *,
                      overwrite: bool = False, save_masks: bool = False, batch_size: int = 1,
                      save_every: int = SAVE_EVERY, vid_stride: int = 1, save_crops: bool = False,
                      save_txt: bool = False, stages: Sequence[Stage | str] = (),
                      sinks: Sequence[Sink | str] = ()) -> PredictSummary:
    """Predict on files, folders or globs; write pictures and ``predictions.json`` into ``out_dir``.

    ``predictions.json`` is a COCO results list; each entry also has ``file_name`` (the input path)
    and ``category_name``. ``image_id`` is the input's position in the expanded list. For thousands of
    images: an unreadable file is skipped with one warning (and counted); an image whose picture is
    already in ``out_dir`` is skipped and its earlier results kept (``overwrite`` redoes it); the
    results file is rewritten atomically every ``save_every`` images, so it is valid whenever the
    run stops. ``save_masks``: ``masks/<name>.png`` of instance ids per image (see :func:`instance_png`).
    ``save_crops``: ``crops/<class>/<name>_<k>.jpg``, each detection's box cut out of the image.
    ``save_txt``: ``labels/<name>.txt``, YOLO labels (:func:`yolo_lines`), so predictions train again.
    Videos among the inputs go through the same stages and sinks, frame by frame (every ``vid_stride``-th):
    ``<stem>.mp4`` and ``<stem>.frames.json`` (see :mod:`segtune.predict.video`).

    Args:
        stages: extra stages (:class:`~segtune.predict.pipeline.Stage` instances or names registered in
            ``STAGES``), run in order on each image and frame after the model.
        sinks: extra sinks (instances or names registered in ``SINKS``), given each item they take after the
            built-in outputs and before the picture and the video.
    """
    results, pictures, chosen = choose_sinks(sinks, save_masks=save_masks, save_txt=save_txt,
                                             save_crops=save_crops, save_every=save_every)
    pipeline = Pipeline(predictor, build_units(stages, STAGES), chosen)
    paths = expand_inputs(inputs)
    out = make_folder(out_dir, what="output folder (--out)")
    videos = [p for p in paths if is_video(p)]
    images = ImageStream([p for p in paths if not is_video(p)], batch_size=batch_size)
    if not overwrite:  # a picture means the image was done by an earlier run into this folder
        images.skip = {i for i, name in enumerate(images.names) if picture_path(out, name).is_file()}
    pipeline.start(RunContext(out, predictor, resumed={i: str(images.paths[i]) for i in sorted(images.skip)}))
    skipped: list[str] = []
    summaries = []
    for video in videos:
        try:
            summaries.append(run_video(pipeline, video, out, vid_stride=vid_stride))
        except DatasetError as e:
            logger.warning("predict: skipped %s (%s)", video, e)
            skipped.append(str(video))
    if images.skip:
        logger.info("predict: %d of %d images already have pictures in %s: skipped (--overwrite redoes them)",
                    len(images.skip), len(images.paths), out)
    pipeline.run(images)
    skipped += images.skipped
    pipeline.finish()
    if skipped:
        logger.warning("predict: %d of %d inputs could not be read and were skipped", len(skipped), len(paths))
    pictures_done = sorted([picture_path(out, images.names[i]) for i in images.skip] + pictures.written)
    logger.info("predicted %d images: %d detections above score %.2f", len(pictures_done), len(results.results),
                predictor.score_threshold)
    return PredictSummary(out_dir=out, pictures=pictures_done, results_file=results.file,
                          num_detections=len(results.results), skipped=skipped, videos=summaries)
