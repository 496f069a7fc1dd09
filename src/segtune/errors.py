"""Owns segtune's exception types: every error a user can cause is one of these.

The CLI turns them into ``segtune: error: ...`` and an exit code: 2 for bad input or config,
1 for failures at run time (a download that fails, a non-finite loss).
"""

from __future__ import annotations


class SegtuneError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(SegtuneError):
    """A config file, a flag or an override is wrong."""

    exit_code = 2


class DatasetError(SegtuneError):
    """The data on disk is missing, unreadable or inconsistent; the message names the file."""

    exit_code = 2


class CheckpointError(SegtuneError):
    """A checkpoint file is missing, unreadable or not a segtune checkpoint."""

    exit_code = 2


class WeightsError(SegtuneError):
    """Pretrained weights could not be found, fetched or loaded."""

    exit_code = 2


class DownloadError(SegtuneError):
    """A download failed or gave a file that is not what was expected."""

    exit_code = 1


class TrainingError(SegtuneError):
    """Training cannot go on (for example the loss became non-finite)."""

    exit_code = 1


class TrainingInterrupted(SegtuneError):
    """Ctrl-C or SIGTERM stopped training after a step; ``last.pt`` holds the exact state to resume from."""

    exit_code = 130


class DistributedError(SegtuneError):
    """Another process of a distributed run died or stopped answering; rank 0 wrote ``last.pt`` at the last
    step it completed (:mod:`segtune.engine.faults`)."""

    exit_code = 1


class ExportError(SegtuneError):
    """A model cannot be written in the format asked for (an exporter fails on it)."""

    exit_code = 1


class WriteError(SegtuneError):
    """A file cannot be written (a full disk, a quota, a read-only folder); the file it replaces is kept."""

    exit_code = 1


class EvaluationError(SegtuneError):
    """Detections cannot be scored against the ground truth (ids that are not in it)."""

    exit_code = 2
