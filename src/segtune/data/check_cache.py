"""Owns remembering the data doctor's verdict, so an unchanged data set is not checked twice.

The report of a check is kept under ``$SEGTUNE_CACHE_DIR`` (default ``~/.cache/segtune``) in
``checks/``, keyed by a fingerprint of everything the verdict depends on: segtune's version, the
format and its settings, and the name, size and modification time of every image and annotation
file. Kept in the user's cache rather than in the data folder, which may be read-only or shared.
Change a file (or a setting) and the fingerprint changes: the data set is checked again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from segtune.data.base import DetectionDataset, Problem
from segtune.fileio import write_json
from segtune.version import __version__

logger = logging.getLogger(__name__)

#: Settings that do not change what the data doctor finds (the split, the loader).
_IRRELEVANT = ("path", "val_path", "test_path", "test_size", "test_max", "split", "split_seed", "workers", "aspect_ratio_group_factor",
               "check_cache")


def cache_dir() -> Path:
    """Where checks are remembered: ``$SEGTUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/segtune``, else ``~/.cache/segtune``."""
    if os.environ.get("SEGTUNE_CACHE_DIR"):
        return Path(os.environ["SEGTUNE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segtune"


def _stat(path: Path) -> list[Any]:
    try:
        st = path.stat()
    except OSError:
        return [str(path), -1, -1]
    return [str(path), st.st_size, st.st_mtime_ns]


def fingerprint(dataset: DetectionDataset, data_cfg: Any) -> str:
    """A hash of what the check of ``dataset`` depends on (see the module docstring)."""
    settings = {k: v for k, v in dataclasses.asdict(data_cfg).items() if k not in _IRRELEVANT}
    digest = hashlib.sha256(json.dumps([__version__, dataset.format, str(dataset.root), settings],
                                       sort_keys=True, default=str).encode())
    seen: set[Path] = set()
    for i in range(len(dataset)):
        for path in dataset.source_files(i):
            if path not in seen:  # one annotation file for many images (COCO) is read once
                seen.add(path)
                digest.update(json.dumps(_stat(path)).encode())
    return digest.hexdigest()


def _path(key: str) -> Path:
    return cache_dir() / "checks" / f"{key[:32]}.json"


def load_report(key: str, report_type: type) -> Any | None:
    """The report remembered under ``key``, or None (none, unreadable, or another key's)."""
    path = _path(key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") != key:
            return None
        fields = data["report"]
        fields["problems"] = [Problem(**p) for p in fields["problems"]]
        for name in ("instances_per_image", "height_range", "width_range"):
            if fields.get(name) is not None:
                fields[name] = tuple(fields[name])
        return report_type(**fields)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_report(key: str, report: Any) -> None:
    """Remember ``report`` under ``key``; a cache that cannot be written is skipped with a debug line."""
    try:
        write_json(_path(key), {"key": key, "report": dataclasses.asdict(report)})
    except Exception as e:  # noqa: BLE001  (a cache is never worth failing a run for)
        logger.debug("data check not cached (%s)", e)
