"""Owns the YOLO segmentation data set: Ultralytics' ``images/`` + ``labels/`` layout and its data YAML.

Each image ``.../images/<sub>/<name>.<ext>`` has a label file ``.../labels/<sub>/<name>.txt`` (Ultralytics'
rule: the last ``images`` folder in the path becomes ``labels``); a missing label file makes the image a
negative. Each line of a label file is one instance, with 0-based class index and coordinates normalised
by the image width and height:

- ``cls x1 y1 x2 y2 x3 y3 ...``: a polygon of at least 3 points;
- ``cls cx cy w h``: a box (Ultralytics' detection line), used as a rectangular mask, so one data set
  can mix segmentation and detection labels (so four numbers always mean a box, never a 2-point polygon).

Polygons are rasterised with COCO's convention (see :mod:`segtune.data.polygons`). Class names come
from the data YAML's ``names`` (a list, or an ``{index: name}`` mapping). All images under the YAML's
``train``, ``val`` and ``test`` entries together form the data set, and those entries are its own split
(:attr:`~segtune.data.base.DetectionDataset.given_split`): ``val`` is evaluated (``test`` when there is
no ``val``; with both, the ``test`` images are held out). A folder holding a data YAML and no
``images/`` (Roboflow's export: ``train/images``, ``valid/images``, ``test/images``) is read through its
YAML; Roboflow's ``../train/images`` entries are found beside the YAML too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtune.data.base import FORMATS, WARNING, DetectionDataset, Instances, ProblemSink, relative_name
from segtune.data.images import IMAGE_EXTENSIONS
from segtune.data.polygons import is_coordinate, polygons_to_mask, rectangle_polygon
from segtune.data.root import is_file
from segtune.data.yolo_yaml import (NAME_FILES, SPLIT_KEYS, class_names, find_names_file, has_names, read_yaml,
                                    split_yaml)
from segtune.errors import DatasetError

#: The largest YOLO coordinate (a fraction of the image size) read as a place rather than a broken number.
YOLO_LIMIT = 4.0

#: How far a normalised coordinate may stray outside [0, 1] (rounding in converters) before a warning.
TOLERANCE = 1e-3


@dataclass(frozen=True)
class _Shape:
    """One label line: its class (1-based), polygon (normalised ``[x1, y1, ...]``) and line number."""

    label: int
    polygon: tuple[float, ...]
    line: int


def label_path(image: Path) -> Path:
    """The label file of ``image``: the last ``images`` folder in its path replaced by ``labels``, suffix .txt.

    Without an ``images`` folder in the path, the label file sits next to the image (as in Ultralytics).
    """
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@FORMATS.register("yolo")
class YoloDataset(DetectionDataset):
    """A segmentation data set in Ultralytics' YOLO layout (see the module docstring).

    Targets are described in :class:`~segtune.data.base.DetectionDataset`; labels are the YOLO class
    index + 1, and ``Instances.ids`` (named in messages) are 1-based line numbers of the label file.

    Args:
        path: a data YAML (``path:`` optional root, ``train:``/``val:``/``test:`` image folders or
            image-list .txt files, relative to ``path`` or to the YAML's folder, ``names:`` the classes)
            or a folder holding ``images/`` and ``labels/`` (classes from a data.yaml, dataset.yaml,
            other *.yaml with ``names``, or classes.txt inside it).
        transforms: a callable ``(image, target) -> (image, target)``, e.g. a ``transforms.v2`` pipeline.
        files: restrict the data set to these image names (relative to the data root, forward slashes).
        keep_crowd, sink: see :class:`~segtune.data.base.DetectionDataset`.

    Raises:
        DatasetError: the YAML or a folder it names is missing or malformed, no class names, no images;
            or (unless ``sink`` collects) an error-level problem in a label file.
    """

    format = "yolo"

    @classmethod
    def detect(cls, path: Path, data_cfg: Any) -> bool:
        if path.is_file():
            return path.suffix.lower() in (".yaml", ".yml") and has_names(path)
        if path.is_dir() and not (path / "images").is_dir() and split_yaml(path) is not None:
            return True
        if not (path.is_dir() and (path / "images").is_dir() and (path / "labels").is_dir()):
            return False
        # A mask folder laid out as images/ + labels/ holds mask images there, not label text files.
        labels = path / "labels"
        return any(labels.rglob("*.txt")) or not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in labels.rglob("*"))

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        transforms: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None,
        files: Sequence[str] | None = None,
        keep_crowd: bool = True,
        sink: ProblemSink | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__(transforms=transforms, keep_crowd=keep_crowd, sink=sink, allow_outside_root=allow_outside_root)
        path = Path(path)
        self._listed: dict[Path, tuple[Path, int, str]] = {}  # image -> (list file, line number, line)
        self._named_folders: list[Path] = []  # the data YAML's folder and the image folders it names
        if not path.exists():
            raise DatasetError(f"{path}: data path does not exist")
        if path.is_dir() and not (path / "images").is_dir() and split_yaml(path) is not None:
            path = split_yaml(path)  # a split export (Roboflow): read through its data YAML
        if path.is_file():
            data = read_yaml(path)
            self.names_file = path
            self.classes = class_names(data, path)
            self.root, by_key = self._sources_from_yaml(path, data)
            sources = [source for found in by_key.values() for source in found]
        else:
            self.root = path
            if not (path / "images").is_dir():
                for yaml_file in (path / name for name in NAME_FILES if (path / name).is_file()):
                    class_names(read_yaml(yaml_file), yaml_file)  # a split export's YAML that is broken: say how
                raise DatasetError(f"{path / 'images'}: images folder not found (a YOLO data set holds images/ "
                                   "and labels/, or pass its data YAML as --data)")
            self.names_file = find_names_file(path)
            if self.names_file.suffix == ".txt":
                self.classes = self._read_classes_txt(self.names_file)
            else:
                self.classes = class_names(read_yaml(self.names_file), self.names_file)
            sources = [path / "images"]
            by_key = {"train": sources}

        per_key = {key: self._collect_images(found) for key, found in by_key.items()}
        images = [image for listed in per_key.values() for image in listed]
        if not images:  # name what lists the images (the data YAML, or the images folder) and where it looked
            raise DatasetError(f"{path if path.is_file() else path / 'images'}: no images found in "
                               f"{', '.join(str(s) for s in sources)} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        key_of: dict[Path, str] = {}  # which entry listed each image (the first, where entries overlap)
        for key, listed in per_key.items():
            for image in listed:
                key_of.setdefault(image, key)
        by_label: dict[Path, Path] = {}
        paths: dict[str, Path] = {}
        roles: dict[str, list[str]] = {}
        for image in images:
            name = relative_name(image, self.root)
            if name in paths:  # listed twice (train and val overlap): one image, once
                continue
            roles.setdefault(key_of.get(image, "train"), []).append(name)
            label = label_path(image)
            if label in by_label:
                self.problem("duplicate-name", image,
                             f"two images share one label file {label} ({by_label[label].name} and {image.name}); "
                             "this one is left out")
                continue
            by_label[label] = image
            paths[name] = image
        self._check_orphan_labels(sources, set(by_label))

        self._labels: dict[str, Path] = {}
        self._shapes: dict[str, list[_Shape]] = {}
        for name, image in paths.items():
            label = label_path(image)
            self._labels[name] = label
            self._shapes[name] = self._parse(label) if label.is_file() else []
        if paths and not any(label.is_file() for label in self._labels.values()):
            # Every image a negative is almost always labels kept somewhere the path rule does not look.
            first = next(iter(paths.values()))
            self.problem("no-labels", self.root, f"none of the {len(paths)} images has a label file (for "
                         f"{first} it would be {label_path(first)}); all train as negatives", WARNING)
        self._set_images(paths, files)
        self._set_given_split(roles, path.name)

    def data_roots(self) -> list[Path]:
        """The data root (the YAML's ``path``), and the YAML's folder and image folders it names."""
        return [self.root, *self._named_folders]

    def _entry_of(self, name: str, path: Path) -> tuple[str, str]:
        listed = self._listed.get(path)
        return (f"{listed[0]}", f"line {listed[1]} '{listed[2]}'") if listed else super()._entry_of(name, path)

    # --- listing ----------------------------------------------------------------------------------

    def _sources_from_yaml(self, yaml_path: Path, data: dict[str, Any]) -> tuple[Path, dict[str, list[Path]]]:
        """The data root and the image folders / image-list files named by ``train``, ``val`` and ``test``."""
        here = yaml_path.parent
        self._named_folders.append(here)
        given = data.get("path")
        # Normalised, so that one image reached through different spellings ('a/../b') is one image.
        root = Path(os.path.normpath(here if not given else here / str(given)))
        sources: dict[str, list[Path]] = {}
        for key in SPLIT_KEYS:
            entries = data.get(key)
            if entries is None or entries == "":
                continue
            for entry in entries if isinstance(entries, list) else [entries]:
                if not isinstance(entry, str) or not entry:
                    raise DatasetError(f"{yaml_path}: '{key}' entries are folder or .txt paths; got {entry!r}")
                tries = [Path(os.path.normpath(base / entry)) for base in (root, here)]
                # Roboflow writes "../train/images" for folders that sit beside its data.yaml.
                tries.append(here / Path(*[p for p in Path(entry).parts if p not in ("..", ".")]))
                found = next((t for t in tries if t.exists()), None)
                if found is None:
                    raise DatasetError(f"{yaml_path}: {key} '{entry}' not found (looked for "
                                       f"{' and '.join(str(t) for t in dict.fromkeys(tries))})")
                sources.setdefault(key, []).append(found)
                if found.is_dir():
                    self._named_folders.append(found)
        if not sources:
            raise DatasetError(f"{yaml_path}: no images listed; expected 'train:' and/or 'val:' (and 'test:') "
                               "naming image folders")
        # Names are relative to ``path:`` when it exists; Ultralytics YAMLs often point ``path`` at
        # their own datasets folder, so fall back to the YAML's folder.
        return (root if root.is_dir() else here), sources

    def _collect_images(self, sources: list[Path]) -> list[Path]:
        images: list[Path] = []
        for source in sources:
            if source.is_dir():
                images += _list_images(source)
            elif source.suffix.lower() == ".txt":
                images += self._read_image_list(source)
            else:
                raise DatasetError(f"{source}: expected a folder of images or a .txt list of image paths")
        return images

    def _read_image_list(self, path: Path) -> list[Path]:
        """An Ultralytics image-list file: one image path a line, relative to the list's folder or absolute."""
        images = []
        for n, line in enumerate(self._read_text(path) or [], start=1):
            line = line.strip()
            if not line:
                continue
            image = path.parent / line if not Path(line).is_absolute() else Path(line)
            if is_file(image):
                images.append(Path(os.path.normpath(image)))
                self._listed[images[-1]] = (path, n, line)
            else:
                self.problem("missing-image", path, f"line {n}: image {image} does not exist; left out", WARNING)
        return images

    def _check_orphan_labels(self, sources: list[Path], used: set[Path]) -> None:
        """Report label files in the labels folders of ``sources`` that belong to no image."""
        orphans: dict[Path, Path] = {}  # label file -> where its image was looked for
        for source in sources:
            if not source.is_dir():
                continue
            labels_dir = label_path(source / "x.jpg").parent
            if labels_dir == source or not labels_dir.is_dir():  # labels beside images: any .txt may be a note
                continue
            for p in sorted(labels_dir.rglob("*.txt")):
                if p not in used and not (p.parent == labels_dir and p.name == "classes.txt"):
                    orphans.setdefault(p, (source / p.relative_to(labels_dir)).with_suffix(".*"))
        for n, (orphan, where) in enumerate(orphans.items()):
            self.problem("missing-image", orphan, f"label file has no image (looked for {where}); ignored"
                         + (f"; {len(orphans) - 1} more label files lack images" if len(orphans) > 1 and not n else ""),
                         WARNING)

    # --- label files ------------------------------------------------------------------------------

    def _read_text(self, path: Path) -> list[str] | None:
        try:
            return path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            self.problem("bad-label-file", path, f"not a UTF-8 text file (byte {e.start}); its labels are ignored")
        except OSError as e:
            self.problem("bad-label-file", path, f"cannot read ({e.strerror}); its labels are ignored")
        return None

    def _read_classes_txt(self, path: Path) -> list[str]:
        names = [line.strip() for line in (self._read_text(path) or []) if line.strip()]
        if not names:
            raise DatasetError(f"{path}: no class names (expected one name per line)")
        return names

    def _parse(self, path: Path) -> list[_Shape]:
        """Read one label file; malformed lines are reported (naming the line) and left out."""
        lines = self._read_text(path)
        if lines is None:
            return []
        shapes: list[_Shape] = []
        seen: dict[tuple[float, ...], int] = {}
        outside: list[int] = []
        duplicates: list[str] = []
        for n, line in enumerate(lines, start=1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                values = [float(t) for t in tokens]
            except ValueError:
                bad = next(t for t in tokens if not _is_number(t))
                self.problem("bad-label-file", path, f"line {n}: '{bad}' is not a number; expected "
                             "'class x1 y1 x2 y2 x3 y3 ...' (normalised polygon) or 'class cx cy w h' (box)")
                continue
            cls, coords = values[0], values[1:]
            if not math.isfinite(cls) or cls != int(cls):
                self.problem("bad-label-file", path, f"line {n}: class '{tokens[0]}' is not a whole number")
                continue
            if not 0 <= cls < len(self.classes):
                self.problem("unknown-label", path, f"line {n}: class {int(cls)} is not in the {len(self.classes)} "
                             f"class names of {self.names_file} (0..{len(self.classes) - 1}); instance left out")
                continue
            if not all(is_coordinate(v, YOLO_LIMIT) for v in coords):
                self.problem("bad-label-file", path, f"line {n}: coordinates must be finite fractions of the image "
                             f"size (0..1; at most {YOLO_LIMIT:g} from 0)")
                continue
            if len(coords) == 4:
                cx, cy, w, h = coords
                polygon = rectangle_polygon(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            elif len(coords) % 2:
                self.problem("bad-label-file", path, f"line {n}: {len(coords)} coordinates, an odd number; expected "
                             "x y pairs after the class (a polygon) or 'cx cy w h' (a box)")
                continue
            elif len(coords) < 6:
                self.problem("bad-polygon", path, f"line {n}: a polygon of {len(coords) // 2} point(s); "
                             "at least 3 are needed; instance left out")
                continue
            else:
                polygon = coords
            if any(v < -TOLERANCE or v > 1 + TOLERANCE for v in polygon):
                outside.append(n)
            key = (cls, *polygon)
            if key in seen:  # Ultralytics drops repeated rows too: they would count one object twice
                duplicates.append(f"{n} (= line {seen[key]})")
                continue
            seen[key] = n
            clamped = tuple(min(max(v, 0.0), 1.0) for v in polygon)
            shapes.append(_Shape(label=int(cls) + 1, polygon=clamped, line=n))
        if outside:
            self.problem("out-of-range", path, f"line(s) {_short(outside)}: coordinates outside [0, 1] (they are "
                         "normalised by the image size); clamped to the image", WARNING)
        if duplicates:
            self.problem("duplicate-instance", path, f"line(s) {_short(duplicates)} repeat an earlier line; "
                         "left out", WARNING)
        return shapes

    # --- access -----------------------------------------------------------------------------------

    def label_path(self, index: int) -> Path:
        """The label file of image ``index`` (it may not exist: the image is then a negative)."""
        return self._labels[self.files[index]]

    def _annotation_source(self, index: int) -> str:
        label = self.label_path(index)
        return str(label if label.is_file() else self.image_path(index))

    def _instances(self, index: int, height: int, width: int) -> Instances:
        shapes = self._shapes[self.files[index]]
        if not shapes:
            return Instances(labels=torch.zeros((0,), dtype=torch.int64),
                             masks=torch.zeros((0, height, width), dtype=torch.uint8), ids=[])
        scale = np.array([width, height], dtype=np.float64)
        masks = np.stack([
            polygons_to_mask([(np.asarray(s.polygon).reshape(-1, 2) * scale).ravel().tolist()], height, width)
            for s in shapes
        ])
        return Instances(labels=torch.tensor([s.label for s in shapes], dtype=torch.int64),
                         masks=torch.from_numpy(masks), ids=[s.line for s in shapes])


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _short(items: list[Any], limit: int = 10) -> str:
    """``1, 2, 3`` or ``1, 2, ... (12 in all)``: keeps a message about a huge file one line long."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all)"

