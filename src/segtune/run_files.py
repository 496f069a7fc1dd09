"""Owns the names of the files in a run folder: what the trainer writes and what the report reads back.

Kept below the engine so that readers of a run folder (the report) need not import the trainer.
"""

from __future__ import annotations

CONFIG_FILE = "config.yaml"      # the run's full configuration
SPLIT_FILE = "split.json"        # the train / test image names and where the split came from
LOG_FILE = "train.log"
RUN_STATE_FILE = "run.json"      # segtune.checkpoint.RunState: classes, category ids, data path, epochs
METRICS_JSON = "metrics.json"    # one record per epoch (losses, learning rate, COCO metrics)
METRICS_CSV = "metrics.csv"
STEPS_CSV = "steps.csv"          # the loss terms and learning rate of every optimiser step
TEST_DETECTIONS = "test_detections.json"  # COCO results of the best epoch's model on the test split
RUN_INFO = "run_info.json"       # the machine and the times of the run
REPORT_HTML = "report.html"
