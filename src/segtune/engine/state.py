"""Owns what makes resume exact: RNG states as plain tensors, the run to resume, and the checkpoint's position."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtune.checkpoint import load_checkpoint
from segtune.engine.budget import Stopwatch
from segtune.errors import CheckpointError, ConfigError

logger = logging.getLogger("segtune.train")


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
    python = state["python"]
    # weights_only loading gives lists where tuples were saved; random.setstate needs tuples.
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_resume_checkpoint(spec: str, out: str | os.PathLike) -> Path:
    """``last.pt`` of the run ``spec`` names: a run folder, a ``.pt`` file, or ``latest``.

    ``latest`` is the most recently modified run next to ``out`` (``runs/train`` -> the newest of
    ``runs/*/weights/last.pt``).
    """
    if spec == "latest":
        parent = Path(out).parent
        candidates = sorted(parent.glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError(f"--resume: no run with weights/last.pt under {parent}/")
        return candidates[-1]
    path = Path(spec)
    if path.is_dir():
        path = path / "weights" / "last.pt"
    if not path.is_file():
        raise ConfigError(f"--resume {spec}: {path} not found (give a run folder or its weights/last.pt)")
    return path


def load_resume_state(path: Path) -> dict[str, Any]:
    """Load a ``last.pt`` and check it holds what resuming needs."""
    ckpt = load_checkpoint(path)
    for key in ("optimizer", "scheduler", "epoch", "step"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: cannot resume from it (no '{key}'; only last.pt holds the training state)")
    return ckpt


def restore_training_state(trainer: Any, ckpt: dict[str, Any]) -> None:
    """Put every state a ``last.pt`` holds back into ``trainer`` (set up for the same run): model,
    optimiser, schedule, scaler, position, history, training clock, RNG. The hooks' states (the EMA's
    average) go back into the hooks, once made (:func:`hook_states`); the fitted length is in the
    run state."""
    trainer.model.load_state_dict(ckpt["model"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scheduler.load_state_dict(ckpt["scheduler"])
    if "scaler" in ckpt:
        trainer.scaler.load_state_dict(ckpt["scaler"])
    trainer.epoch, trainer.step = int(ckpt["epoch"]), int(ckpt["step"])
    trainer.start_iteration = int(ckpt.get("iteration", 0))
    trainer.history = list(ckpt.get("history", []))
    trainer.clock = Stopwatch(float(ckpt.get("train_time_s", 0.0)))
    trainer.resumed_from = ckpt["path"]
    if "rng" in ckpt:
        restore_rng(ckpt["rng"])


def hook_states(ckpt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The named hooks' states in a ``last.pt``; one written before hooks kept their own has the EMA's at the top."""
    states = dict(ckpt.get("hooks") or {})
    if "ema" in ckpt and "ema" not in states:
        states["ema"] = ckpt["ema"]
    return states
