"""COCO evaluation of models and checkpoints. Uses ``segtune.data`` and ``segtune.models``."""

from segtune.evaluation.coco_eval import STAT_NAMES, detections, ground_truth, score
from segtune.evaluation.evaluator import EvalReport, dataset_ground_truth, evaluate_checkpoint, evaluate_model

__all__ = [
    "STAT_NAMES", "EvalReport", "dataset_ground_truth", "detections", "evaluate_checkpoint", "evaluate_model",
    "ground_truth", "score",
]
