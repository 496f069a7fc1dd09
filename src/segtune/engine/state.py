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
