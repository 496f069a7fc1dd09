"""Owns the LabelMe data set: a folder of per-image JSON files with labelled polygon shapes.

Every ``*.json`` under the folder (sub-folders included, hidden ones skipped) that has ``shapes`` and
``imagePath`` annotates one image: ``imagePath`` relative to the JSON's folder; when that does not
resolve (a path from another machine), the file of that name beside the JSON, else the image the JSON
embeds as base64 ``imageData`` (how older LabelMe versions save). Shapes become instance masks with COCO's pixel convention (see
:mod:`segtune.data.polygons`):

- ``polygon`` (at least 3 points), ``rectangle`` (2 opposite corners), ``circle`` (centre, then a
  point on the rim) and ``mask`` (a base64 PNG placed at its first point, as LabelMe's AI tools save);
- ``line``, ``linestrip``, ``point`` and ``points`` have no area: a warning, and they are skipped.

Shapes with the same label and the same non-null ``group_id`` are one instance (LabelMe's convention
for an object split in parts). The classes are a ``labels.txt`` or ``classes.txt`` in the folder (one
name a line, LabelMe's reserved ``__ignore__`` and ``_background_`` skipped), else the sorted labels found.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from segtune.data.base import FORMATS, WARNING, DetectionDataset, Instances, ProblemSink, relative_name
from segtune.data.images import load_rgb, max_pixels, read_size
from segtune.data.polygons import circle_mask, is_coordinate, polygons_to_mask, rectangle_polygon
from segtune.data.root import is_file
from segtune.errors import DatasetError

#: Label names LabelMe's own tools reserve (ignored regions, background); never classes here.
RESERVED_LABELS = ("__ignore__", "_background_")
#: Files that name the classes, one a line, looked for in the data folder in this order.
CLASS_FILES = ("labels.txt", "classes.txt")
#: Shape types that have no area and so make no mask.
AREALESS_SHAPES = ("line", "linestrip", "point", "points")


@dataclass
class _Part:
    """One shape: its type and points (pixels), or a decoded ``mask`` shape."""

    kind: str
    points: list[tuple[float, float]]
    mask: np.ndarray | None = None


@dataclass
class _Object:
    """One instance: a label name, the shapes it is made of, and the 1-based index of its first shape."""

    label: str
    first: int
    parts: list[_Part] = field(default_factory=list)


@dataclass
class _Annotation:
    json_path: Path
    size: tuple[int, int] | None  # (height, width) as the JSON says, if it says
    objects: list[_Object]
    embedded: bool = False  # the image is the JSON's imageData (no file of it exists)
    image_path: str = ""  # 'imagePath' as written


def _json_files(folder: Path) -> list[Path]:
    """The *.json files under ``folder``, leaving out hidden folders (.git, .ipynb_checkpoints)."""
    return sorted(p for p in folder.rglob("*.json")
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _looks_like_labelme(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if '"shapes"' not in text:  # skip parsing the many JSONs that clearly are not LabelMe's
        return False
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and isinstance(data.get("shapes"), list)


def _point(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_coordinate(v) for v in value):
        return float(value[0]), float(value[1])
    return None


@FORMATS.register("labelme")
class LabelmeDataset(DetectionDataset):
    """A segmentation data set of LabelMe JSON files (see the module docstring).

    Targets are described in :class:`~segtune.data.base.DetectionDataset`; ``Instances.ids`` (named in
    messages) are 1-based indices into the JSON's ``shapes`` (an instance's first shape).

    Args:
        folder: the folder holding the JSON files (and usually the images).
        classes: class names; default: labels.txt / classes.txt in ``folder``, else the sorted labels found.
        transforms: a callable ``(image, target) -> (image, target)``, e.g. a ``transforms.v2`` pipeline.
        files: restrict the data set to these images (paths relative to ``folder``, forward slashes).
        keep_crowd, sink: see :class:`~segtune.data.base.DetectionDataset`.

    Raises:
        DatasetError: the folder is missing, holds no LabelMe JSON, or names no class; or (unless
            ``sink`` collects) an error-level problem in a JSON file.
    """

    format = "labelme"

    @classmethod
    def detect(cls, path: Path, data_cfg: Any) -> bool:
        if not path.is_dir() or ((path / "images").is_dir() and (path / "labels").is_dir()):
            return False
        return any(_looks_like_labelme(p) for p in _json_files(path))

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        classes: Sequence[str] | None = None,
        transforms: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None,
        files: Sequence[str] | None = None,
        keep_crowd: bool = True,
        sink: ProblemSink | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__(transforms=transforms, keep_crowd=keep_crowd, sink=sink, allow_outside_root=allow_outside_root)
        self.root = Path(folder)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: data folder does not exist")
        paths: dict[str, Path] = {}
        self._annotations: dict[str, _Annotation] = {}
        for json_path in _json_files(self.root):
            found = self._read(json_path)
            if found is None:
                continue
            image, annotation = found
            name = relative_name(image, self.root)
            if name in paths:
                self.problem("duplicate-name", json_path, f"annotates {name}, which "
                             f"{self._annotations[name].json_path} annotates too; this file is ignored")
                continue
            paths[name] = image
            self._annotations[name] = annotation
        if not paths:
            raise DatasetError(f"{self.root}: no LabelMe JSON files with 'shapes' and an image (an existing "
                               "'imagePath', or the image embedded as 'imageData') found")

        self.classes_file: Path | None = None
        if classes is not None:
            self.classes = [str(c) for c in classes]
        else:
            self.classes = self._read_class_file()
        if not self.classes:
            self.classes = sorted({o.label for a in self._annotations.values() for o in a.objects})
        if not self.classes:
            raise DatasetError(f"{self.root}: no shape has a label and there is no {' or '.join(CLASS_FILES)} "
                               "naming the classes")
        self._check_labels()
        self._set_images(paths, files)

    def _entry_of(self, name: str, path: Path) -> tuple[str, str]:
        annotation = self._annotations[name]
        return str(annotation.json_path), f"imagePath '{annotation.image_path}'"

    # --- reading ----------------------------------------------------------------------------------

    def _read_class_file(self) -> list[str]:
        for name in CLASS_FILES:
            path = self.root / name
            if path.is_file():
                self.classes_file = path
                try:
                    lines = path.read_text(encoding="utf-8").splitlines()
                except (OSError, UnicodeDecodeError) as e:
                    raise DatasetError(f"{path}: cannot read the class names ({e})") from None
                return [n for n in (line.strip() for line in lines) if n and n not in RESERVED_LABELS]
        return []

    def _read(self, path: Path) -> tuple[Path, _Annotation] | None:
        """Parse one JSON; None when it is not a LabelMe file or its image is missing (reported)."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.problem("bad-label-file", path, f"cannot read as UTF-8 text ({e})")
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            self.problem("bad-label-file", path, f"line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})")
            return None
        if not isinstance(data, dict) or "shapes" not in data:
            return None  # some other JSON (a config, a COCO file): not ours
        if not isinstance(data["shapes"], list):
            self.problem("bad-label-file", path, "'shapes' must be a list of shapes")
            return None
        image_path = data.get("imagePath")
        if not isinstance(image_path, str) or not image_path:
            self.problem("bad-label-file", path, "has 'shapes' but no 'imagePath' naming its image")
            return None
        # LabelMe on Windows writes backslashes; they are separators there, never part of a name.
        written = image_path.replace("\\", "/")
        image = Path(os.path.normpath(path.parent / written))
        beside = path.parent / written.rsplit("/", 1)[-1]  # the same name next to the JSON
        if not is_file(image) and is_file(beside):
            image = beside
        embedded = False
        if not is_file(image):
            if not (isinstance(data.get("imageData"), str) and data["imageData"]):
                self.problem("missing-image", path, f"imagePath '{image_path}' points to {image}, which does not "
                             f"exist, and the file embeds no imageData")
                return None
            image, embedded = beside, True  # named as if beside the JSON; the pixels come from imageData
        return image, _Annotation(path, self._size(data), self._objects(path, data["shapes"]), embedded, image_path)

    @staticmethod
    def _size(data: dict[str, Any]) -> tuple[int, int] | None:
        h, w = data.get("imageHeight"), data.get("imageWidth")
        if isinstance(h, int) and isinstance(w, int):
            return h, w
        return None

    def _objects(self, path: Path, shapes: list[Any]) -> list[_Object]:
        """Group the shapes of one file into instances; malformed shapes are reported and left out."""
        objects: list[_Object] = []
        groups: dict[tuple[str, Any], _Object] = {}
        areales: list[str] = []
        for s, shape in enumerate(shapes, start=1):
            if not isinstance(shape, dict) or not isinstance(shape.get("points"), list):
                self.problem("bad-label-file", path, f"shape {s}: expected an object with 'label' and 'points'")
                continue
            label = shape.get("label")
            if not isinstance(label, str) or not label.strip():
                self.problem("unknown-label", path, f"shape {s} has no label; left out")
                continue
            label = label.strip()
            if label in RESERVED_LABELS:
                continue
            kind = shape.get("shape_type") or "polygon"  # LabelMe before 3.0 wrote no shape_type
            if not isinstance(kind, str):
                self.problem("bad-label-file", path, f"shape {s}: 'shape_type' must be a name such as 'polygon', "
                             f"got {kind!r:.40}; left out")
                continue
            if kind in AREALESS_SHAPES:
                areales.append(f"{s} ({kind})")
                continue
            points = [_point(p) for p in shape["points"]]
            if any(p is None for p in points):
                self.problem("bad-label-file", path, f"shape {s}: points must be [x, y] number pairs")
                continue
            part = self._part(path, s, kind, points, shape)
            if part is None:
                continue
            group_id = shape.get("group_id")
            if isinstance(group_id, (list, dict)):  # LabelMe writes a number (or null); these cannot key a group
                self.problem("bad-label-file", path, f"shape {s}: 'group_id' must be a number or null, "
                             f"got {group_id!r:.40}; left out")
                continue
            if group_id is None:
                obj = _Object(label, s)
                objects.append(obj)
            else:
                obj = groups.get((label, group_id))
                if obj is None:
                    obj = groups[(label, group_id)] = _Object(label, s)
                    objects.append(obj)
            obj.parts.append(part)
        if areales:
            self.problem("unsupported-shape", path, f"shape(s) {', '.join(areales)} have no area, so no mask; "
                         "skipped", WARNING)
        return objects

    def _part(self, path: Path, s: int, kind: str, points: list[tuple[float, float]],
              shape: dict[str, Any]) -> _Part | None:
        need = {"polygon": 3, "rectangle": 2, "circle": 2, "mask": 2}.get(kind)
        if need is None:
            self.problem("unsupported-shape", path, f"shape {s}: unknown shape_type '{kind}'; skipped", WARNING)
            return None
        if len(points) < need:
            self.problem("bad-polygon", path, f"shape {s}: a {kind} of {len(points)} point(s); at least {need} "
                         "are needed; left out")
            return None
        if kind != "mask":
            return _Part(kind, points)
        try:
            text = shape.get("mask")
            encoded = base64.b64decode(text if isinstance(text, str) else "", validate=True)
            with Image.open(io.BytesIO(encoded)) as img:
                if img.width * img.height > max_pixels():  # checked from the header, before decoding
                    raise ValueError(f"{img.width} x {img.height} pixels is more than segtune decodes from one "
                                     f"image ({max_pixels()} pixels)")
                mask = np.asarray(img.convert("L")) > 0
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError, SyntaxError) as e:
            self.problem("bad-label-file", path, f"shape {s}: 'mask' is not a base64 PNG ({e})")
            return None
        return _Part(kind, points, mask)

    def _check_labels(self) -> None:
        """Report labels that are not classes (with a class list given or read from a file)."""
        for annotation in self._annotations.values():
            unknown = [o for o in annotation.objects if o.label not in self.classes]
            for o in unknown:
                where = f"the class file {self.classes_file}" if self.classes_file else "the classes given"
                self.problem("unknown-label", annotation.json_path, f"shape {o.first}: label '{o.label}' is not in "
                             f"{where} ({', '.join(self.classes)}); left out")
            if unknown:
                annotation.objects = [o for o in annotation.objects if o.label in self.classes]

    # --- access -----------------------------------------------------------------------------------

    def json_path(self, index: int) -> Path:
        """The LabelMe JSON file of image ``index``."""
        return self._annotations[self.files[index]].json_path

    def _annotation_source(self, index: int) -> str:
        return str(self.json_path(index))

    def embedded_image(self, index: int) -> bytes | None:
        """The image file's bytes from the JSON's ``imageData`` when no image file exists; else None.

        Read from the JSON on demand (each may hold megabytes), not kept in memory.
        """
        annotation = self._annotations[self.files[index]]
        if not annotation.embedded:
            return None
        try:
            data = json.loads(annotation.json_path.read_text(encoding="utf-8"))
            return base64.b64decode(data["imageData"], validate=False)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{annotation.json_path}: cannot read the embedded imageData ({e})") from None

    def read_image(self, index: int) -> np.ndarray:
        embedded = self.embedded_image(index)
        if embedded is None:
            return super().read_image(index)
        return load_rgb(embedded, name=f"{self.json_path(index)} (imageData)")

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        embedded = self.embedded_image(index)
        if embedded is None:
            return super().get_height_and_width(index)
        return read_size(embedded, name=f"{self.json_path(index)} (imageData)")

    def _instances(self, index: int, height: int, width: int) -> Instances:
        annotation = self._annotations[self.files[index]]
        if annotation.size is not None and annotation.size != (height, width):
            h, w = annotation.size
            self.problem("size-mismatch", annotation.json_path,
                         f"imageWidth x imageHeight say {w}x{h} but the image {self.image_path(index)} is "
                         f"{width}x{height}; the shapes may be drawn on another version of the image")
        objects = annotation.objects
        masks = np.zeros((len(objects), height, width), dtype=np.uint8)
        for i, obj in enumerate(objects):
            polygons = []
            for part in obj.parts:
                if part.kind == "polygon":
                    polygons.append([v for p in part.points for v in p])
                elif part.kind == "rectangle":
                    (x0, y0), (x1, y1) = part.points[0], part.points[1]
                    polygons.append(rectangle_polygon(x0, y0, x1, y1))
                elif part.kind == "circle":
                    (cx, cy), (rx, ry) = part.points[0], part.points[1]
                    masks[i] |= circle_mask(cx, cy, math.hypot(rx - cx, ry - cy), height, width)
                else:
                    masks[i] |= _place(part.mask, part.points[0], height, width)
            if polygons:
                masks[i] |= polygons_to_mask(polygons, height, width)
        return Instances(labels=torch.tensor([self.classes.index(o.label) + 1 for o in objects], dtype=torch.int64),
                         masks=torch.from_numpy(masks), ids=[o.first for o in objects])


def _place(mask: np.ndarray, corner: tuple[float, float], height: int, width: int) -> np.ndarray:
    """A LabelMe ``mask`` shape (a crop whose top-left pixel is ``corner``) placed on the full image."""
    out = np.zeros((height, width), dtype=np.uint8)
    x0, y0 = int(corner[0]), int(corner[1])
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y0 + mask.shape[0], height), min(x0 + mask.shape[1], width)
    if bottom > top and right > left:
        out[top:bottom, left:right] = mask[top - y0:bottom - y0, left - x0:right - x0]
    return out
