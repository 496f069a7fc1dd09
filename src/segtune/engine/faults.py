"""Owns telling a broken process group apart and the one line a rank prints when it breaks.

Under torch.distributed a rank loses its peers in two ways: another rank dies (killed, out of memory, a
lost node), and the next collective raises at once (Gloo's ``Connection closed by peer``); or another
rank stops answering without dying, and the collective raises once it has waited ``SEGTUNE_DIST_TIMEOUT``
seconds (:func:`segtune.engine.distributed.timeout_from_env`). :func:`is_peer_failure` recognises both;
:func:`peer_failure_error` makes the :class:`~segtune.errors.DistributedError` that says what happened,
what was saved and how to go on, which the CLI prints as one ``segtune: error: ...`` line.

The trainer catches the failure and, on rank 0 only, writes ``last.pt`` at the last optimiser step it
completed, calling no collective (the peers are gone; DDP keeps the weights the same on every rank);
the other ranks write nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from segtune.engine import distributed as dist
from segtune.engine.distributed import TIMEOUT_ENV
from segtune.errors import DistributedError

# Words of what a collective raises when a peer is gone or silent: Gloo's errors carry the path of their
# source (".../gloo/transport/tcp/pair.cc:561] Connection closed by peer"), NCCL's name it. A RuntimeError
# without any of them is this process's own failure, and keeps its traceback.
_PEER_WORDS = ("gloo/", "nccl", "connection closed", "connection reset", "broken pipe", "timed out waiting",
               "collective operation timeout", "processgroup")
_TIMEOUT_WORDS = ("timed out", "timeout")
_SOURCE = re.compile(r"^\[[^\]]*:\d+\]\s*")  # "[/path/to/pair.cc:561] "


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says another rank is gone or silent: a ``torch.distributed`` error, or a RuntimeError
    from Gloo or NCCL, while this process is in a group of several (never when alone)."""
    if dist.get_world_size() <= 1:
        return False
    if isinstance(exc, torch.distributed.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(word in text for word in _PEER_WORDS)


def is_timeout(exc: BaseException) -> bool:
    """Whether the failure is a collective that waited too long (a silent peer), not a peer that died."""
    text = str(exc).lower()
    return any(word in text for word in _TIMEOUT_WORDS)


def reason(exc: BaseException) -> str:
    """The backend's own words, short: the first sentence of its message, without the source location."""
    lines = str(exc).strip().splitlines()
    text = _SOURCE.sub("", lines[0]) if lines else type(exc).__name__
    first = text.split(". ")[0].rstrip(".")
    return first if len(first) <= 200 else first[:197] + "..."


def peer_failure_error(exc: BaseException, *, rank: int, world_size: int, where: str, timeout_s: float,
                       run_dir: Path | None = None, checkpoint: Path | None = None, step: int = 0
                       ) -> DistributedError:
    """The error rank ``rank`` stops with after ``exc`` broke the group.

    Args:
        exc: what the collective raised (:func:`is_peer_failure`).
        rank, world_size: this process's place in the group.
        where: where training stood, e.g. ``"in epoch 2 after iteration 40"``.
        timeout_s: the collectives' timeout, named when ``exc`` is a timeout.
        run_dir: the run folder, once there is one (the resume command names it).
        checkpoint: the ``last.pt`` that holds the state after ``step`` (rank 0), else None: nothing saved.
        step: the optimiser steps ``checkpoint`` holds.
    """
    if is_timeout(exc):
        what = (f"no answer from another process for {timeout_s:g} s {where} ({reason(exc)}): a process hangs "
                f"or is far slower than the others (if such a wait is expected, e.g. a long evaluation on rank 0, "
                f"allow more with {TIMEOUT_ENV}=SECONDS)")
    else:
        what = f"lost another process {where} ({reason(exc)}): it died or was killed; its own output says why"
    if checkpoint is not None:
        saved = f"{checkpoint} holds the exact state after step {step}"
    elif rank != 0:
        saved = "rank 0 writes the checkpoints, and its last.pt is the latest state saved, if it wrote one"
    elif run_dir is not None:
        saved = "no optimiser step was completed, so nothing was saved"
    else:
        saved = "training had not started, so nothing was saved"
    resume = f": resume with  segtune train --resume {run_dir}" if run_dir is not None and (
        checkpoint is not None or rank != 0) else ""
    return DistributedError(f"rank {rank} of {world_size}: {what}; {saved}{resume}")
