"""Prediction and pictures. Uses ``segtune.models`` (and image reading from ``segtune.data``)."""

from segtune.predict.predictor import Prediction, Predictor, expand_inputs
from segtune.predict.visualise import draw, save_png
from segtune.predict.writer import PredictSummary, predict_to_folder, split_images

__all__ = ["PredictSummary", "Prediction", "Predictor", "draw", "expand_inputs", "predict_to_folder", "save_png",
           "split_images"]
