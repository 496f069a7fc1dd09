"""Owns the process's one OpenVINO ``Core``, and keeping the thread's alternate signal stack valid around work
that makes Cores of its own (NNCF).

Why one Core: OpenVINO's CPU plugin (2026.4.1, ``CPUSpecialSetup`` in ``src/plugins/intel_cpu``) maps a larger
alternate signal stack (``sigaltstack``) for the thread when it is created, and on release puts back the one it
found and unmaps its own. Two plugins released in the order they were made (a Core per file opened, as two
exported files in one process, or the float and INT8 files of ``--int8``) leave the thread on the unmapped
stack of the first, and the next signal the process handles (a child's SIGCHLD, Ctrl-C) kills it with a
SIGSEGV that no handler can report: segtune's test suite died so. One Core, never released, has one plugin.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from collections.abc import Iterator
from typing import Any

from segtune.errors import CheckpointError


def openvino_module(what: object) -> Any:
    """The ``openvino`` package; a CheckpointError naming ``what`` (the file at hand) when it cannot be imported."""
    try:
        import openvino
    except ImportError as e:  # a pinned dependency: only a broken install lands here
        raise CheckpointError(f"{what}: openvino is not importable ({e})") from None
    return openvino


@functools.lru_cache(maxsize=None)
def shared_core() -> Any:
    """The one ``openvino.Core`` every OpenVINO file of this process is read and compiled with (see the module)."""
    return openvino_module("OpenVINO").Core()


class _Stack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _sigaltstack(new: _Stack | None) -> _Stack | None:
    """``sigaltstack(2)`` through ctypes (Python's ``signal`` module has no binding); None where unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        old = _Stack()
        if libc.sigaltstack(ctypes.byref(new) if new is not None else None, ctypes.byref(old)) != 0:
            return None
        return old
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def signal_stack_kept() -> Iterator[None]:
    """Put back, after the block, the alternate signal stack the thread had before it: for work that makes and
    releases Cores of its own (NNCF compiles each model it measures with a new Core), whose plugins may put back
    one another's unmapped stacks. Call it with :func:`shared_core` already made, whose stack stays mapped."""
    shared_core()
    before = _sigaltstack(None)
    try:
        yield
    finally:
        import gc

        gc.collect()  # the block's Cores released now, not at some later signal
        if before is not None:
            _sigaltstack(before)
