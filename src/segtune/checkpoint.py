"""Owns segtune's checkpoint format: a plain dict of tensors and plain values, saved atomically.

Layout (``format_version`` 1): ``format_version``, ``segtune_version``, ``model`` (state dict),
``epoch`` (the epoch to go on with), ``step`` (optimiser steps done), ``classes`` (names, background
excluded), ``category_ids`` (the data set's own class ids), ``config`` (the run's config as a plain
dict: as resolved, plus the settings ``model.adapt_to_data`` fitted to the data before the first step;
the run changes it no further), ``run`` (the :class:`RunState`: what the run learned),
``split`` (train and test file names), ``metrics`` (the last evaluation); keypoint models add
``num_keypoints``, ``keypoint_names``, ``skeleton``. ``last.pt`` also holds what resuming needs:
``optimizer``, ``scheduler``, ``scaler``, ``iteration`` (batches done in ``epoch``), ``rng`` (every RNG
state, as tensors), ``train_time_s``, ``history`` and ``hooks`` (the named hooks' states: the EMA's
average; older files hold it as ``ema`` at the top). The training loop writes and restores these
keys through :class:`segtune.engine.state.TrainingState`. Loading uses ``torch.load(weights_only=True)``.

Checkpoints written before the run-state record have no ``run``: their config holds the resolved data
path and class names, and ``last.pt`` the fitted ``epochs`` and ``max_steps`` at the top level;
:func:`run_state_of` reads both layouts.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segtune.version import __version__
from segtune.config import Config, DataConfig, build_config, flatten, resolve_data_path
from segtune.errors import CheckpointError, ConfigError
from segtune.fileio import atomic_write
from segtune.run_files import BEST_CHECKPOINT, WEIGHTS_DIR, best_checkpoint

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "classes", "config")


@dataclass
class RunState:
    """What a run learns while it runs, kept apart from its :class:`~segtune.config.Config` (fixed before step 1).

    Saved as ``run.json`` in the run folder and under ``run`` in every checkpoint.

    Attributes:
        data_path: the data set the run read (``data.path``, else ``$SEGTUNE_DATA``, else the default).
        data_format: the format it was read as (``masks``, ``coco``, ``yolo``, ``labelme``).
        classes: class names from the data (background excluded), in label order.
        category_ids: the data set's own id of each class (COCO category ids; 1..N otherwise).
        epochs: the epoch count the run goes to: ``train.epochs``, or the epochs fitted to the time limit.
        max_steps: the optimiser step where the schedule fitted to the time limit ends; None if not fitted.
        val_path: the validation set the test split's names belong to (``--val-data``); None: ``data_path``.
    """

    data_path: str
    data_format: str
    classes: list[str]
    category_ids: list[int]
    epochs: int
    max_steps: int | None = None
    val_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_state_of(ckpt: dict[str, Any]) -> RunState:
    """The run state a checkpoint holds; for a checkpoint from before the record, rebuilt from its config."""
    if isinstance(ckpt.get("run"), dict):
        known = {f.name for f in dataclasses.fields(RunState)}
        return RunState(**{k: v for k, v in ckpt["run"].items() if k in known})
    config = ckpt.get("config", {})
    data = config.get("data", {}) if isinstance(config, dict) else {}
    epochs = ckpt.get("epochs", config.get("train", {}).get("epochs", 1) if isinstance(config, dict) else 1)
    return RunState(data_path=resolve_data_path(data.get("path")), data_format=str(data.get("format", "auto")),
                    classes=list(ckpt["classes"]),
                    category_ids=list(ckpt.get("category_ids") or range(1, len(ckpt["classes"]) + 1)),
                    epochs=int(epochs), max_steps=ckpt.get("max_steps"))


def checkpoint_data(ckpt: dict[str, Any], data: str | None = None, split: str = "train") -> DataConfig:
    """The ``data`` settings that reopen the data set a checkpoint's ``split`` belongs to: its config's, at
    the path the run read (the validation set's, for ``test`` with ``--val-data``), or at ``data`` when
    that data set moved."""
    state = run_state_of(ckpt)
    path = state.val_path if split == "test" and state.val_path else state.data_path
    cfg = checkpoint_config(ckpt).data
    if not data or not path:
        return dataclasses.replace(cfg, path=data or path)
    # files the run named inside the old folder (a class map, an image root) are in the new one now
    moved = {name: str(Path(data) / Path(value).relative_to(path))
             for name in ("class_map", "image_root") for value in [getattr(cfg, name)]
             if value and Path(value).is_relative_to(path)}
    return dataclasses.replace(cfg, path=data, **moved)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format and version keys) to ``path`` via a temporary file and a rename."""
    payload = {"format_version": FORMAT_VERSION, "segtune_version": __version__, **state}
    return atomic_write(path, lambda f: torch.save(payload, f), binary=True, size_hint=_tensor_bytes(payload))


def _tensor_bytes(value: Any) -> int:
    """The bytes of the tensors in ``value`` (nested dicts and lists): about a checkpoint's size on disk."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a segtune checkpoint.

    Raises:
        CheckpointError: the file is missing, not loadable with ``weights_only=True``, or not ours.
    """
    path = Path(path)
    if path.is_dir():
        candidate = best_checkpoint(path)
        if not candidate.is_file():
            raise CheckpointError(f"{path}: a folder, and it holds no {WEIGHTS_DIR}/{BEST_CHECKPOINT}")
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
