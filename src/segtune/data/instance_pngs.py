"""Owns the one-PNG-per-instance data set: every object its own binary mask file (cell and medical imaging).

Two layouts, both detected:

* the Kaggle Data Science Bowl 2018 layout, one folder per image::

      <id>/images/<id>.png
      <id>/masks/<any name>.png        # one binary mask per instance

* the flat layout, masks named after their image::

      images/<stem>.png
      masks/<stem>_<k>.png             # k = 1, 2, ... (or 0, 1, ...), one per instance

Any non-zero pixel of a mask file is the object. Instances that overlap by a few pixels (annotators'
masks of touching cells often do) are kept, with a warning naming both files. Every instance is one
class, named by ``classes`` (default ``object``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtune.data.base import FORMATS, WARNING, DetectionDataset, Instances, ProblemSink, relative_name
from segtune.data.images import IMAGE_EXTENSIONS, load_instance_mask
from segtune.errors import DatasetError

#: The class of every instance when no ``classes`` are given.
OBJECT = "object"
_NUMBERED = re.compile(r"^(?P<stem>.+)_(?P<k>\d+)$")


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _per_image_folders(root: Path) -> list[Path]:
    """The ``<id>/`` folders of the Data Science Bowl layout (each with ``images/`` and ``masks/``)."""
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / "images").is_dir() and (d / "masks").is_dir())


def _numbered_masks(root: Path) -> dict[str, list[Path]]:
    """Flat layout: ``masks/<stem>_<k>.*`` grouped by the stem of an image in ``images/``, in order of ``k``."""
    stems = {p.stem for p in _images_in(root / "images")}
    grouped: dict[str, list[tuple[int, Path]]] = {}
    for mask in _images_in(root / "masks"):
        match = _NUMBERED.match(mask.stem)
        if match and match["stem"] in stems:
            grouped.setdefault(match["stem"], []).append((int(match["k"]), mask))
    return {stem: [p for _, p in sorted(items)] for stem, items in grouped.items()}


def looks_like_instance_pngs(path: Path) -> bool:
    """Whether ``path`` is a folder in either layout (for the flat one: most images have numbered masks,
    which tells it from a mask folder with one instance-id mask per image)."""
    if not path.is_dir():
        return False
    if _per_image_folders(path):
        return True
    images = _images_in(path / "images")
    return bool(images) and len(_numbered_masks(path)) * 2 >= len(images)


@FORMATS.register("instance-pngs")
class InstancePngDataset(DetectionDataset):
    """A data set whose instances are one binary mask file each (see the module docstring).

    Args:
        root: the data set folder, in either layout.
        classes: the one class name (default ``object``).
        transforms, files, keep_crowd, sink: see :class:`~segtune.data.base.DetectionDataset`.

    Raises:
        DatasetError: the folder is in neither layout, or holds no image.
    """

    format = "instance-pngs"

    @classmethod
    def detect(cls, path: Path, data_cfg: Any) -> bool:
        return looks_like_instance_pngs(path)

    @classmethod
    def from_config(cls, data_cfg: Any, path: Path) -> dict[str, Any]:
        return {"classes": data_cfg.classes}

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        classes: Sequence[str] | None = None,
        transforms: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None,
        files: Sequence[str] | None = None,
        keep_crowd: bool = True,
        sink: ProblemSink | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__(transforms=transforms, keep_crowd=keep_crowd, sink=sink, allow_outside_root=allow_outside_root)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: data folder does not exist")
        self.classes = list(classes) if classes else [OBJECT]
        paths: dict[str, Path] = {}
        self._masks: dict[str, list[Path]] = {}
        folders = _per_image_folders(self.root)
        if folders:
            for folder in folders:
                images = _images_in(folder / "images")
                if len(images) != 1:
                    self.problem("missing-image" if not images else "duplicate-name", folder / "images",
                                 f"holds {len(images)} images; the layout has one image per folder"
                                 + ("" if not images else f", so {folder.name} is left out"), WARNING)
                    continue
                name = relative_name(images[0], self.root)
                paths[name], self._masks[name] = images[0], _images_in(folder / "masks")
        elif (self.root / "images").is_dir() and (self.root / "masks").is_dir():
            numbered = _numbered_masks(self.root)
            for image in _images_in(self.root / "images"):
                name = relative_name(image, self.root)
                paths[name], self._masks[name] = image, numbered.get(image.stem, [])
        else:
            raise DatasetError(f"{self.root}: neither <id>/images/ + <id>/masks/ folders nor images/ + masks/ "
                               "(masks named <image stem>_<k>.png) found")
        self._set_images(paths, files)

    def mask_paths(self, index: int) -> list[Path]:
        """The mask files of image ``index``, one per instance."""
        return self._masks[self.files[index]]

    def _annotation_source(self, index: int) -> str:
        masks = self.mask_paths(index)
        return str(masks[0].parent if masks else self.image_path(index))

    def source_files(self, index: int) -> list[Path]:
        return [self.image_path(index), *self.mask_paths(index)]

    def _instances(self, index: int, height: int, width: int) -> Instances:
        files = self.mask_paths(index)
        masks = torch.zeros((len(files), height, width), dtype=torch.uint8)
        for k, path in enumerate(files):
            pixels = load_instance_mask(path)
            if pixels.shape != (height, width):
                raise DatasetError(f"{path}: mask is {pixels.shape[1]}x{pixels.shape[0]} but its image "
                                   f"{self.image_path(index).name} is {width}x{height} (width x height)")
            masks[k] = torch.from_numpy((pixels != 0).astype(np.uint8))
        self._check_overlaps(masks, files)
        return Instances(labels=torch.ones((len(files),), dtype=torch.int64), masks=masks,
                         ids=list(range(1, len(files) + 1)))

    def _check_overlaps(self, masks: torch.Tensor, files: list[Path]) -> None:
        """Warn about instances sharing pixels (kept: a few shared pixels at a boundary are common)."""
        if len(masks) < 2:
            return
        flat = masks.reshape(len(masks), -1).to(torch.float32)
        shared = flat @ flat.T  # pixels each pair shares
        shared.fill_diagonal_(0)
        pairs = torch.nonzero(torch.triu(shared) > 0)
        if len(pairs):
            i, j = (int(v) for v in pairs[0])
            more = f" ({len(pairs) - 1} more overlapping pairs in this image)" if len(pairs) > 1 else ""
            self.problem("overlap", files[i], f"overlaps {files[j].name} by {int(shared[i, j])} pixels; both are "
                         f"kept{more}", WARNING)
