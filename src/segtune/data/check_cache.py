"""Owns remembering the data doctor's verdict, so an unchanged data set is not checked twice.

The report of a check is kept beside the data, in a ``.segtune/`` folder of the data folder (or of
the folder holding the annotation file), so it travels with the data set and every user and rank
of a shared set finds it. Where that folder cannot be written (read-only or shared media) the
user's cache (``$XDG_CACHE_HOME/segtune/checks``, default ``~/.cache/segtune/checks``) is used
instead; ``$SEGTUNE_CACHE_DIR`` set names the one place to use (``$SEGTUNE_CACHE_DIR/checks``).

A report is keyed by a fingerprint of everything the verdict depends on: segtune's version, the
format and its settings, and the name, size and modification time of every image and annotation
file. Its file is named by the data set's identity (path, format, settings) alone, so the report
of a changed data set replaces the old one rather than piling up beside it. Change a file (or a
setting) and the fingerprint changes: the data set is checked again.
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
from segtune.fileio import cache_dir, write_json
from segtune.version import __version__

logger = logging.getLogger(__name__)

#: Settings that do not change what the data doctor finds (the split, the loader).
_IRRELEVANT = ("path", "val_path", "test_path", "test_size", "test_max", "split", "split_seed", "workers", "aspect_ratio_group_factor",
               "check_cache", "cache", "cache_max_gb")


#: Bumped when the report gains or changes a field, so a report kept by an older segtune is not reused.
REPORT_VERSION = 2

#: The folder beside the data that holds segtune's notes on it.
BESIDE_DATA = ".segtune"


def check_folders(data_path: str | Path) -> list[Path]:
    """Where the check of the data at ``data_path`` is looked for and kept, first choice first."""
    user = cache_dir() / "checks"
    if os.environ.get("SEGTUNE_CACHE_DIR"):
        return [user]
    data_path = Path(data_path)
    folder = data_path if data_path.is_dir() else data_path.parent
    return [folder / BESIDE_DATA, user]


def _stat(path: Path) -> list[Any]:
    try:
        st = path.stat()
    except OSError:
        return [str(path), -1, -1]
    return [str(path), st.st_size, st.st_mtime_ns]


@dataclasses.dataclass(frozen=True)
class CheckKey:
    """Which data set (``name``: its path, format and settings) and which state of its files (``key``)."""

    data_path: str
    name: str
    key: str


def fingerprint(dataset: DetectionDataset, data_cfg: Any, data_path: str | Path) -> CheckKey:
    """What the check of ``dataset`` (opened from ``data_path``) depends on (see the module docstring)."""
    settings = {k: v for k, v in dataclasses.asdict(data_cfg).items() if k not in _IRRELEVANT}
    identity = json.dumps([dataset.format, str(Path(data_path).resolve()), str(dataset.root), settings],
                          sort_keys=True, default=str)
    digest = hashlib.sha256(json.dumps([__version__, REPORT_VERSION, identity]).encode())
    seen: set[Path] = set()
    for i in range(len(dataset)):
        for path in dataset.source_files(i):
            if path not in seen:  # one annotation file for many images (COCO) is read once
                seen.add(path)
                digest.update(json.dumps(_stat(path)).encode())
    name = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return CheckKey(data_path=str(data_path), name=f"check-{name}.json", key=digest.hexdigest())


def load_report(key: CheckKey, report_type: type) -> tuple[Any, Path] | tuple[None, None]:
    """The report remembered under ``key`` and where it was, or Nones (none, unreadable, or another state's)."""
    for folder in check_folders(key.data_path):
        report = _read(folder / key.name, key.key, report_type)
        if report is not None:
            return report, folder / key.name
    return None, None


def _read(path: Path, key: str, report_type: type) -> Any | None:
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


def save_report(key: CheckKey, report: Any) -> Path | None:
    """Remember ``report`` under ``key`` in the first place that can be written; where, or None.

    A place that cannot be written is skipped with a debug line: a cache is never worth failing a run for.
    """
    for folder in check_folders(key.data_path):
        try:
            write_json(folder / key.name, {"key": key.key, "data": key.data_path, "segtune": __version__,
                                           "report": dataclasses.asdict(report)})
            return folder / key.name
        except Exception as e:  # noqa: BLE001
            logger.debug("data check not kept in %s (%s)", folder, e)
    return None
