"""Owns the data-root rule: which image paths lie inside the folders a data set may read from.

A data set downloaded from anywhere names its images itself (COCO's ``file_name``, LabelMe's
``imagePath``, a YOLO image list); an entry such as ``../../home/me/private.png``, an absolute path or
a symlink inside the data folder pointing elsewhere would otherwise pull any image on the machine
into training, the data doctor's grids and the report. Paths are compared after every symlink is
resolved, so a link inside the folder that points out of it counts as outside. Written here because
``pathlib``'s ``resolve`` costs one system call per path component and data sets hold 100,000 images:
the folders are resolved once each and only the file itself is checked for being a link.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path


def is_file(path: Path) -> bool:
    """``path.is_file()``, False for a path the system refuses (a name over 255 bytes, a path too long) rather
    than its OSError: an annotation can name anything, and such an image is missing like any other."""
    try:
        return path.is_file()
    except OSError:
        return False


class _Resolver:
    """Real (symlink-free) paths of files, resolving each folder once."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: Path) -> str:
        text = os.path.abspath(path)
        if os.path.islink(text):
            return os.path.realpath(text)
        folder, name = os.path.split(text)
        real = self._folders.get(folder)
        if real is None:
            real = self._folders[folder] = os.path.realpath(folder)
        return os.path.join(real, name)


def _inside(real: str, roots: Iterable[str]) -> bool:
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def outside_roots(paths: Mapping[str, Path], roots: Iterable[Path]) -> dict[str, str]:
    """The entries of ``paths`` (name -> image path) whose real path lies under none of ``roots``,
    as name -> real path (links resolved), in ``paths``' order."""
    real_roots = [os.path.realpath(root) for root in roots]
    resolve = _Resolver()
    out = {}
    for name, path in paths.items():
        real = resolve(path)
        if not _inside(real, real_roots):
            out[name] = real
    return out
