"""Owns writing files atomically: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segtune.errors import ConfigError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_folder(path: str | os.PathLike, *, what: str = "output folder") -> Path:
    """``path`` as a folder to write into later: a ConfigError now if it, or a folder above it, is a file."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"{path}: cannot be the {what}: {blocker} is a file, not a folder (give a folder path)")
    return path


def make_folder(path: str | os.PathLike, *, what: str = "output folder") -> Path:
    """Create folder ``path`` (and its parents) if missing; a file in the way is a clear error, not a traceback.

    Raises:
        ConfigError: ``path``, or a folder above it, exists as a file (or cannot be made).
    """
    path = check_folder(path, what=what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{path}: cannot make the {what} ({e.strerror or e})") from None
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = False) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it over ``path``.

    If ``write`` raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    make_folder(path.parent, what=f"folder of {path.name}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data), binary=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")
