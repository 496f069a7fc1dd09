"""Owns stopping on Ctrl-C / SIGTERM: the first asks the loop to stop after the current step, the second stops at once."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger("segtune.train")


class StopSignals:
    """While entered, SIGINT and SIGTERM set :attr:`name` instead of killing the process (main thread only).

    The training loop reads :attr:`name` between optimiser steps, writes ``last.pt`` and stops; a
    second signal raises KeyboardInterrupt. The previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self.name: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.name:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        logger.warning("%s received: finishing this step, then writing last.pt (again to stop at once)", self.name)
