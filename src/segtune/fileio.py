"""Owns writing files atomically: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segtune.errors import ConfigError, WriteError


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


#: Write failures that are the disk's, not the program's: said in one line naming the path.
_DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large for the file system", errno.EROFS: "read-only file system",
                errno.EIO: "input/output error"}


def _disk_error(error: BaseException) -> OSError | None:
    """The OSError of a full disk (or another of _DISK_ERRORS) behind ``error``: torch.save, for one, reports
    it as a RuntimeError ("unexpected pos ...") whose context is the OSError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
            return error
        error = error.__cause__ or error.__context__
    return None


def _write_error(path: Path, error: OSError, written: int, size_hint: int | None) -> WriteError:
    needed = max(written, size_hint or 0)
    try:
        free = f", {shutil.disk_usage(path.parent).free / 2**20:.0f} MB free there now"
    except OSError:
        free = ""
    size = f"{needed / 2**20:.1f} MB" if needed >= 2**20 else f"{max(1, round(needed / 2**10))} kB"
    return WriteError(f"{path}: {_DISK_ERRORS[error.errno]} (needed about {size}{free}); "
                      f"{'the previous file is kept' if path.exists() else 'nothing was written'}")


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = False,
                 size_hint: int | None = None) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it over ``path``.

    If ``write`` raises, the temporary file is removed and ``path`` is left as it was. A full disk (or a
    quota, a read-only file system, an I/O error) becomes a :class:`WriteError` naming ``path`` and about
    how many bytes were needed (``size_hint``, or what was written before it failed).
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
    except BaseException as e:
        try:
            written = os.path.getsize(tmp)
            os.unlink(tmp)
        except FileNotFoundError:
            written = 0
        disk = _disk_error(e)
        if disk is not None:
            raise _write_error(path, disk, written, size_hint) from None
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


def cache_dir() -> Path:
    """The user's cache: ``$SEGTUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/segtune``, else ``~/.cache/segtune``."""
    if os.environ.get("SEGTUNE_CACHE_DIR"):
        return Path(os.environ["SEGTUNE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segtune"
