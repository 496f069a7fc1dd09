"""Owns stopping on Ctrl-C / SIGTERM: the first asks the loop to stop after the current step, the second stops at once.

Under torch.distributed the ranks agree on the stop (:meth:`StopSignals.agreed`), so a signal that reaches
one rank, or reaches them at different steps, stops them all after the same step.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("segtune.train")


class StopSignals:
    """While entered, SIGINT and SIGTERM set :attr:`name` instead of killing the process (main thread only).

    The training loop reads :attr:`name` between optimiser steps, writes ``last.pt`` and stops; a
    second signal raises KeyboardInterrupt. The previous handlers come back on exit (SIGTERM's stays
    ignored after :meth:`ignore_sigterm`).
    """

    def __init__(self) -> None:
        self.name: str | None = None
        self._old: dict[int, Any] = {}
        self._ignore_sigterm = False

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, signal.SIG_IGN if self._ignore_sigterm and sig == signal.SIGTERM else handler)
        self._old = {}

    def ignore_sigterm(self) -> None:
        """Ignore SIGTERM from now on, and leave it ignored on exit rather than restoring its handler.

        For a rank on its way out of a broken or stopped process group: the launcher's teardown SIGTERM
        (torchrun sends one to every rank once one has ended) can then neither cut ``last.pt`` short nor
        kill the process before it has said why. The launcher's SIGKILL (30 s later under torchrun) still
        ends a process that lingers.
        """
        self._ignore_sigterm = True
        if signal.SIGTERM in self._old:  # entered on the main thread
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def agreed(self, max_over_ranks: Callable[[int], int]) -> str | None:
        """The signal that stops every rank after this step: this process's, else one another rank received;
        None for none. Every rank must call it at the same step (``max_over_ranks`` is a collective)."""
        received = signal.Signals[self.name].value if self.name else 0
        agreed = max_over_ranks(received)
        return signal.Signals(agreed).name if agreed else None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.name:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        logger.warning("%s received: finishing this step, then writing last.pt (again to stop at once)", self.name)
