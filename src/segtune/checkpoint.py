"""Owns segtune's checkpoint format: a plain dict of tensors and plain values, saved atomically.

Layout (``format_version`` 1): ``format_version``, ``segtune_version``, ``model`` (state dict),
``epoch`` (the epoch to go on with), ``step`` (optimiser steps done), ``classes`` (names, background
excluded), ``category_ids`` (the data set's own class ids), ``config`` (the resolved config as a plain
dict), ``split`` (train and test file names), ``metrics`` (the last evaluation); keypoint models add
``num_keypoints``, ``keypoint_names``, ``skeleton``. ``last.pt`` also holds what resuming needs:
``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``iteration`` (batches done in ``epoch``), ``rng``
(every RNG state, as tensors) and ``history``. Loading uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from segtune.version import __version__
from segtune.config import Config, build_config, flatten
from segtune.errors import CheckpointError, ConfigError
from segtune.fileio import atomic_write

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "classes", "config")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format and version keys) to ``path`` via a temporary file and a rename."""
    payload = {"format_version": FORMAT_VERSION, "segtune_version": __version__, **state}
    return atomic_write(path, lambda f: torch.save(payload, f), binary=True)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a segtune checkpoint.

    Raises:
        CheckpointError: the file is missing, not loadable with ``weights_only=True``, or not ours.
    """
    path = Path(path)
    if path.is_dir():
        candidate = path / "weights" / "best.pt"
        if not candidate.is_file():
            raise CheckpointError(f"{path}: a folder, and it holds no weights/best.pt")
        path = candidate
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated zip, or objects weights_only refuses
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a segtune checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        hint = ""
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            hint = "; it looks like a bare state dict: use it with 'segtune train --weights PATH'"
        raise CheckpointError(f"{path}: not a segtune checkpoint (missing key '{missing[0]}'){hint}")
    if not isinstance(ckpt["format_version"], int):
        raise CheckpointError(f"{path}: not a segtune checkpoint (format_version is {ckpt['format_version']!r})")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {ckpt['format_version']} is newer than this segtune reads ({FORMAT_VERSION})"
        )
    ckpt["path"] = str(path)
    return ckpt


def checkpoint_config(ckpt: dict[str, Any]) -> Config:
    """The resolved config a checkpoint was trained with.

    Raises:
        CheckpointError: the stored config does not load in this segtune.
    """
    try:
        return build_config(("checkpoint config", flatten(ckpt["config"])))
    except ConfigError as e:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: its config does not load ({e})") from None


def keypoint_info(dataset: Any) -> dict[str, Any]:
    """The checkpoint's keypoint keys: ``num_keypoints``, ``keypoint_names``, ``skeleton`` (COCO's 1-based pairs).

    ``num_keypoints`` is what :func:`segtune.models.model_from_checkpoint` rebuilds the keypoint head
    with; names and skeleton let ``segtune predict`` label and draw them. Empty values without keypoints.
    """
    names = list(dataset.keypoint_names or [])
    count = len(names) or int(getattr(dataset, "num_keypoints", 0) or 0)
    return {"num_keypoints": count, "keypoint_names": names,
            "skeleton": [list(pair) for pair in (dataset.skeleton or [])]}
