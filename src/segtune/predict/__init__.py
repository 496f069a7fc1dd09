"""Prediction and pictures. Uses ``segtune.models`` (and image reading from ``segtune.data``).

A run is source -> model -> stages -> sinks (:mod:`segtune.predict.pipeline`): register a
:class:`Stage` in :data:`STAGES` or a :class:`Sink` in :data:`SINKS` and pass it to :func:`predict_to_folder`.
"""

from segtune.predict.pipeline import FRAME, IMAGE, SINKS, STAGES, Item, Pipeline, RunContext, Sink, Stage, Stream
from segtune.predict.predictor import Prediction, Predictor, expand_inputs
from segtune.predict.sinks import coco_entries
from segtune.predict.video import VideoSummary, predict_video
from segtune.predict.visualise import draw, save_png
from segtune.predict.writer import PredictSummary, predict_to_folder, split_images

__all__ = ["FRAME", "IMAGE", "SINKS", "STAGES", "Item", "Pipeline", "PredictSummary", "Prediction", "Predictor",
           "RunContext", "Sink", "Stage", "Stream", "VideoSummary", "coco_entries", "draw", "expand_inputs",
           "predict_to_folder", "predict_video", "save_png", "split_images"]
