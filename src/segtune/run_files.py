"""Owns the names of the files in a run folder: what the trainer writes and what the report, evaluation,
prediction and export read back.

Kept below the engine so that readers of a run folder need not import the trainer. A run folder::

    config.yaml split.json run.json train.log metrics.json metrics.csv steps.csv results.png
    test_detections.json test_metrics.json run_info.json report.html tb/
    weights/last.pt weights/best.pt weights/ema.pt weights/epoch-N.pt
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_FILE = "config.yaml"      # the run's full configuration
SPLIT_FILE = "split.json"        # the train / test image names and where the split came from
LOG_FILE = "train.log"
RUN_STATE_FILE = "run.json"      # segtune.checkpoint.RunState: classes, category ids, data path, epochs
METRICS_JSON = "metrics.json"    # one record per epoch (losses, learning rate, COCO metrics)
METRICS_CSV = "metrics.csv"
STEPS_CSV = "steps.csv"          # the loss terms and learning rate of every optimiser step
TEST_DETECTIONS = "test_detections.json"  # COCO results of the best epoch's model on the test split
TEST_METRICS_FILE = "test_metrics.json"   # the best checkpoint scored on --test-data, after training
RUN_INFO = "run_info.json"       # the machine and the times of the run
REPORT_HTML = "report.html"
RESULTS_PNG = "results.png"      # loss terms and AP per epoch, redrawn after every epoch
TENSORBOARD_DIR = "tb"           # TensorBoard event files (train.tensorboard)

WEIGHTS_DIR = "weights"          # the checkpoints, below
LAST_CHECKPOINT = "last.pt"      # after every epoch and at an interruption: everything resuming needs
BEST_CHECKPOINT = "best.pt"      # the best epoch's model (what evaluate, predict and export take from a run)
EMA_CHECKPOINT = "ema.pt"        # the moving average of the weights (train.ema)
_EPOCH_PREFIX, _EPOCH_SUFFIX = "epoch-", ".pt"  # epoch-N.pt: the last train.keep_last epochs


def epoch_file(epoch: int) -> str:
    """The name of epoch ``epoch``'s checkpoint: ``epoch-N.pt``."""
    return f"{_EPOCH_PREFIX}{epoch}{_EPOCH_SUFFIX}"


def weights_dir(run_dir: str | os.PathLike) -> Path:
    """``run_dir/weights``: where a run's checkpoints are."""
    return Path(run_dir) / WEIGHTS_DIR


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    """``run_dir/weights/last.pt``: the checkpoint a run resumes from."""
    return weights_dir(run_dir) / LAST_CHECKPOINT


def best_checkpoint(run_dir: str | os.PathLike) -> Path:
    """``run_dir/weights/best.pt``: the checkpoint a run folder stands for (evaluate, predict, export)."""
    return weights_dir(run_dir) / BEST_CHECKPOINT


def ema_checkpoint(run_dir: str | os.PathLike) -> Path:
    """``run_dir/weights/ema.pt``: the moving average's checkpoint."""
    return weights_dir(run_dir) / EMA_CHECKPOINT


def epoch_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The ``epoch-N.pt`` files in ``run_dir/weights``, oldest epoch first (by N, not by name: 10 after 9)."""
    numbered = {}
    for path in weights_dir(run_dir).glob(f"{_EPOCH_PREFIX}*{_EPOCH_SUFFIX}"):
        number = path.name[len(_EPOCH_PREFIX):-len(_EPOCH_SUFFIX)]
        if number.isdigit():  # not some other file that happens to match, e.g. epoch-old.pt
            numbered[path] = int(number)
    return sorted(numbered, key=numbered.__getitem__)


def run_dir_of(checkpoint: str | os.PathLike) -> Path:
    """The run folder a checkpoint in its ``weights/`` belongs to."""
    return Path(checkpoint).parent.parent
