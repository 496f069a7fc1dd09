"""COCO evaluation of models and checkpoints. Uses ``segtune.data`` and ``segtune.models``."""

from segtune.evaluation.coco_eval import KEYPOINT_STAT_NAMES, STAT_NAMES, detections, ground_truth, score, stat_names
from segtune.evaluation.evaluator import (EvalReport, dataset_ground_truth, evaluate_checkpoint, evaluate_model,
                                          primary_metric)

__all__ = [
    "KEYPOINT_STAT_NAMES", "STAT_NAMES", "EvalReport", "dataset_ground_truth", "detections", "evaluate_checkpoint",
    "evaluate_model", "ground_truth", "primary_metric", "score", "stat_names",
]
