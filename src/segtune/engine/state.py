"""Owns what makes resume exact: the training state a checkpoint saves and a resume puts back, key by key
(:class:`TrainingState`), RNG states as plain tensors, and finding the run to resume."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from segtune.checkpoint import load_checkpoint
from segtune.engine.budget import Stopwatch
from segtune.errors import CheckpointError, ConfigError
from segtune.run_files import LAST_CHECKPOINT, WEIGHTS_DIR, last_checkpoint

if TYPE_CHECKING:
    from segtune.engine.hooks import TrainerView

logger = logging.getLogger("segtune.train")

#: What a :class:`StateKey`'s ``save`` returns for a key this run's checkpoints do not have.
OMIT = object()


def capture_rng() -> dict[str, Any]:
    """Every random stream training draws from, as values ``torch.load(weights_only=True)`` accepts.

    NumPy's state holds an ndarray, which weights_only refuses: it is stored as a tensor.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng` took."""
    python = state["python"]
    # weights_only loading gives lists where tuples were saved; random.setstate needs tuples.
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class StateKey:
    """One key of a checkpoint: how its value is taken from the trainer, and how a resume puts it back.

    Attributes:
        name: the key in the checkpoint.
        save: ``save(trainer, iteration)``: the value to store, or :data:`OMIT` for none.
        restore: ``restore(trainer, value)``, called on a resume when the checkpoint has the key (an
            older ``last.pt`` may lack it: the trainer's starting value stands). None: the resumed run
            is built from the key rather than given it back (the comment beside it says where).
        resume_only: only ``last.pt`` has it; ``best.pt``, ``epoch-N.pt`` and ``ema.pt`` do not.
    """

    name: str
    save: Callable[[Any, int], Any]
    restore: Callable[[Any, Any], None] | None = None
    resume_only: bool = False


def _set(attribute: str, convert: Callable[[Any], Any]) -> Callable[[Any, Any], None]:
    """A restore that sets ``trainer.<attribute>`` to the stored value, converted."""
    return lambda trainer, value: setattr(trainer, attribute, convert(value))


def _keypoint_key(name: str) -> StateKey:
    """One of the keypoint keys (``num_keypoints``, ``keypoint_names``, ``skeleton``); keypoint models only."""
    # Read back by segtune.models.model_from_checkpoint (the head) and predict (names, skeleton); a
    # resumed run takes them from its data again.
    return StateKey(name, lambda t, _: t.keypoints.get(name, OMIT))


class TrainingState:
    """A run's training state as its checkpoints hold it: saved and restored through one table, :attr:`KEYS`.

    Each key's save stands beside its restore, so no key is saved without being put back or said to
    be read elsewhere. The run's description (``classes``, ``category_ids``, ``config``, ``run``,
    ``split``, the keypoint keys) has no restore: a resumed run is built from it
    (:func:`segtune.engine.parts.build_parts`). The callers add ``metrics`` (the epoch's evaluation),
    which nothing restores. Values are plain tensors and numbers (``weights_only``-loadable).

    Args:
        trainer: the trainer whose state this is (:class:`~segtune.engine.hooks.TrainerView`).

    Example::

        save_checkpoint(last_checkpoint(run_dir), TrainingState(trainer).state_dict(iteration))
        TrainingState(trainer).load_state_dict(load_resume_state(path))  # a trainer built for the same run
    """

    KEYS: tuple[StateKey, ...] = (
        # In every checkpoint: the model, where the run stands, and what rebuilds and labels the model.
        StateKey("model", lambda t, _: t.model.state_dict(), lambda t, v: t.model.load_state_dict(v)),
        StateKey("epoch", lambda t, _: t.epoch, _set("epoch", int)),  # the epoch to go on with
        StateKey("step", lambda t, _: t.step, _set("step", int)),  # optimiser steps done
        StateKey("classes", lambda t, _: list(t.run.classes)),  # read by run_state_of and model_from_checkpoint
        StateKey("category_ids", lambda t, _: list(t.run.category_ids)),  # read by run_state_of
        StateKey("config", lambda t, _: t.cfg.to_dict()),  # read by configure: a resumed run's config layer
        StateKey("run", lambda t, _: t.run.to_dict()),  # read by run_state_of: build_run_state keeps the fitted length
        StateKey("split", lambda t, _: t.split),  # read by RunData.split
        _keypoint_key("num_keypoints"),
        _keypoint_key("keypoint_names"),
        _keypoint_key("skeleton"),
        # In last.pt only: what going on from batch ``iteration`` of ``epoch`` needs.
        StateKey("optimizer", lambda t, _: t.optimizer.state_dict(), lambda t, v: t.optimizer.load_state_dict(v),
                 resume_only=True),
        StateKey("scheduler", lambda t, _: t.scheduler.state_dict(), lambda t, v: t.scheduler.load_state_dict(v),
                 resume_only=True),
        StateKey("scaler", lambda t, _: t.scaler.state_dict(), lambda t, v: t.scaler.load_state_dict(v),
                 resume_only=True),
        StateKey("iteration", lambda t, iteration: iteration, _set("start_iteration", int), resume_only=True),
        StateKey("rng", lambda t, _: capture_rng(), lambda t, v: restore_rng(v), resume_only=True),
        StateKey("train_time_s", lambda t, _: t.clock.elapsed, _set("clock", lambda v: Stopwatch(float(v))),
                 resume_only=True),
        StateKey("history", lambda t, _: t.history, _set("history", list), resume_only=True),
        # The named hooks' states (the EMA's average): restored by load_hook_states once the hooks are made.
        StateKey("hooks", lambda t, _: t.hooks.state_dict(), resume_only=True),
    )

    def __init__(self, trainer: TrainerView) -> None:
        self.trainer = trainer

    def _collect(self, keys: tuple[StateKey, ...], iteration: int) -> dict[str, Any]:
        values = ((key.name, key.save(self.trainer, iteration)) for key in keys)
        return {name: value for name, value in values if value is not OMIT}

    def checkpoint(self) -> dict[str, Any]:
        """What every checkpoint holds: the model, the position, and what rebuilds and labels the model."""
        return self._collect(tuple(k for k in self.KEYS if not k.resume_only), 0)

    def state_dict(self, iteration: int = 0) -> dict[str, Any]:
        """What ``last.pt`` holds: :meth:`checkpoint` plus what resuming at batch ``iteration`` of the
        current epoch needs (0: at the start of ``trainer.epoch``)."""
        return self._collect(self.KEYS, iteration)

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Put a loaded ``last.pt`` back into the trainer (built for the same run): every key with a
        restore that the checkpoint has. The hooks' states wait for :meth:`load_hook_states`."""
        for key in self.KEYS:
            if key.restore is not None and key.name in ckpt:
                key.restore(self.trainer, ckpt[key.name])
        self.trainer.resumed_from = ckpt["path"]  # load_checkpoint notes where it read the file

    def load_hook_states(self, ckpt: dict[str, Any]) -> None:
        """Give the named hooks their states back; a ``last.pt`` written before hooks kept their own
        holds the EMA's at the top (``ema``)."""
        states = dict(ckpt.get("hooks") or {})
        if "ema" in ckpt and "ema" not in states:
            states["ema"] = ckpt["ema"]
        self.trainer.hooks.load_state_dict(states)


def find_resume_checkpoint(spec: str, out: str | os.PathLike) -> Path:
    """``last.pt`` of the run ``spec`` names: a run folder, a ``.pt`` file, or ``latest``.

    ``latest`` is the most recently modified run next to ``out`` (``runs/train`` -> the newest of
    ``runs/*/weights/last.pt``).
    """
    if spec == "latest":
        parent = Path(out).parent
        candidates = sorted(parent.glob(f"*/{WEIGHTS_DIR}/{LAST_CHECKPOINT}"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError(f"--resume: no run with {WEIGHTS_DIR}/{LAST_CHECKPOINT} under {parent}/")
        return candidates[-1]
    path = Path(spec)
    if path.is_dir():
        path = last_checkpoint(path)
    if not path.is_file():
        raise ConfigError(f"--resume {spec}: {path} not found (give a run folder or its "
                          f"{WEIGHTS_DIR}/{LAST_CHECKPOINT})")
    return path


def load_resume_state(path: Path) -> dict[str, Any]:
    """Load a ``last.pt`` and check it holds what resuming needs."""
    ckpt = load_checkpoint(path)
    for key in ("optimizer", "scheduler", "epoch", "step"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: cannot resume from it (no '{key}'; only {LAST_CHECKPOINT} holds the "
                                  "training state)")
    return ckpt
