"""Owns the instance-mask-folder data set: an images folder plus a masks folder (the Penn-Fudan layout).

Each mask pixel holds an instance id (0 = background). A mask is found by name:
``<masks_dir>/<image stem><mask_suffix>.<any image extension>``, never by sort order. The folders
and the suffix are found when not given: the first of :data:`IMAGE_DIRS` holding images and of
:data:`MASK_DIRS` holding image files, and the suffix of :data:`MASK_SUFFIXES` that pairs the most
images with masks (Penn-Fudan: ``PNGImages``, ``PedMasks``, ``_mask``; many exports: ``images``,
``masks``, no suffix). Without a class
map every instance is class 1; a class map (YAML/JSON: ``classes`` and ``values``, a mask value or
colour per class) or a per-image sidecar ``<mask stem>.json`` (``{"<value>": "<class>"}``) gives
multi-class mask folders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from segtune.data.base import FORMATS, DetectionDataset, Instances, ProblemSink
from segtune.data.images import IMAGE_EXTENSIONS, load_instance_mask
from segtune.errors import DatasetError


#: Image folder names looked for, in order, when ``images_dir`` is ``auto``.
IMAGE_DIRS = ("PNGImages", "images", "imgs", "img", "JPEGImages")
#: Mask folder names looked for, in order, when ``masks_dir`` is ``auto``.
MASK_DIRS = ("PedMasks", "masks", "labels", "annotations", "instances", "SegmentationObject")
#: Mask name suffixes tried when ``mask_suffix`` is ``auto`` (the one pairing most images wins; ties: this order).
MASK_SUFFIXES = ("_mask", "", "_label", "_instances", "_masks", "-mask")
#: The class of every instance when there is no class map and no ``classes``: Penn-Fudan's for its layout.
DEFAULT_CLASS = {"PedMasks": "pedestrian"}
OBJECT = "object"


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir() if p.is_file())


def find_layout(root: Path, images_dir: str = "auto", masks_dir: str = "auto") -> tuple[str, str] | None:
    """The ``(images_dir, masks_dir)`` of a mask folder at ``root`` (given ones kept), or None if it is none."""
    images = [images_dir] if images_dir != "auto" else [d for d in IMAGE_DIRS if _has_images(root / d)]
    masks = [masks_dir] if masks_dir != "auto" else [d for d in MASK_DIRS if _has_images(root / d)]
    images = [d for d in images if (root / d).is_dir()]
    masks = [d for d in masks if (root / d).is_dir() and d not in images]
    return (images[0], masks[0]) if images and masks else None


def _named_or_default(root: Path, given: str, names: tuple[str, ...]) -> str:
    """A given folder name, else the first of ``names`` that exists, else the first (Penn-Fudan's: named in errors)."""
    if given != "auto":
        return given
    return next((d for d in names if (root / d).is_dir()), names[0])


def choose_suffix(image_stems: list[str], mask_stems: set[str]) -> str:
    """The suffix of :data:`MASK_SUFFIXES` that pairs the most images with a mask."""
    return max(MASK_SUFFIXES, key=lambda suffix: (sum(stem + suffix in mask_stems for stem in image_stems),
                                                  -MASK_SUFFIXES.index(suffix)))


def parse_value(key: Any, where: str) -> int:
    """A mask value from a class map key: an int, ``"#rrggbb"`` or ``"r,g,b"`` (as load_instance_mask packs colours)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    text = str(key).strip()
    try:
        if text.startswith("#") and len(text) == 7:
            return int(text[1:], 16)
        if "," in text:
            r, g, b = (int(v) for v in text.split(","))
            return (r << 16) | (g << 8) | b
        return int(text)
    except ValueError:
        raise DatasetError(f"{where}: mask value {key!r} is not an integer, '#rrggbb' or 'r,g,b'") from None


def load_class_map(path: str | os.PathLike) -> tuple[list[str], dict[int, str]]:
    """Read a class map file: ``classes: [names]`` and optional ``values: {value or colour: name}``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON: one parser for both
    except FileNotFoundError:
        raise DatasetError(f"{path}: class map file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the class map ({e})") from None
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: not valid YAML/JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
        raise DatasetError(f"{path}: a class map needs 'classes: [name, ...]' (and optionally 'values: {{value: name}}')")
    classes = [str(c) for c in data["classes"]]
    if not isinstance(data.get("values") or {}, dict):
        raise DatasetError(f"{path}: 'values' must map mask values or colours to class names "
                           f"({{1: name, '#ff0000': name}}), got {data['values']!r:.60}")
    values = {parse_value(k, str(path)): str(v) for k, v in (data.get("values") or {}).items()}
    unknown = sorted({v for v in values.values() if v not in classes})
    if unknown:
        raise DatasetError(f"{path}: values map to {unknown}, which are not in classes {classes}")
    return classes, values


@FORMATS.register("masks")
class MaskFolderDataset(DetectionDataset):
    """A detection/segmentation data set read from an images folder and an instance-masks folder.

    Targets are described in :class:`~segtune.data.base.DetectionDataset`.

    Args:
        root: the data set folder.
        images_dir, masks_dir: sub-folders of ``root``.
        mask_suffix: appended to an image's stem to name its mask.
        classes: class names; without a class map every instance is ``classes[0]``.
        class_map: a class map file (see the module docstring).
        transforms: a callable ``(image, target) -> (image, target)``, e.g. a ``transforms.v2`` pipeline.
        files: restrict the data set to these image file names, in this order (a split).
        keep_crowd, sink: see :class:`~segtune.data.base.DetectionDataset`.

    Raises:
        DatasetError: the folder or a sub-folder is missing, an image has no mask or a mask no image.
    """

    format = "masks"

    @classmethod
    def detect(cls, path: Path, data_cfg: Any) -> bool:
        return path.is_dir() and find_layout(path, data_cfg.images_dir, data_cfg.masks_dir) is not None

    @classmethod
    def from_config(cls, data_cfg: Any, path: Path) -> dict[str, Any]:
        return {"images_dir": data_cfg.images_dir, "masks_dir": data_cfg.masks_dir,
                "mask_suffix": data_cfg.mask_suffix, "classes": data_cfg.classes, "class_map": data_cfg.class_map}

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        images_dir: str = "auto",
        masks_dir: str = "auto",
        mask_suffix: str = "auto",
        classes: Sequence[str] | None = None,
        class_map: str | os.PathLike | None = None,
        transforms: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None,
        files: list[str] | None = None,
        keep_crowd: bool = True,
        sink: ProblemSink | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__(transforms=transforms, keep_crowd=keep_crowd, sink=sink, allow_outside_root=allow_outside_root)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: data folder does not exist")
        self._named_images_dir = images_dir != "auto"  # a folder the user names is part of the data root
        # Folders that do not pair up are named in the checks below (the first looked-for name by default).
        images_dir, masks_dir = find_layout(self.root, images_dir, masks_dir) or (
            _named_or_default(self.root, images_dir, IMAGE_DIRS), _named_or_default(self.root, masks_dir, MASK_DIRS))
        self.images_root = self.root / images_dir
        self.masks_root = self.root / masks_dir
        self.classes = list(classes) if classes else [DEFAULT_CLASS.get(masks_dir, OBJECT)]
        self.values: dict[int, str] = {}
        self.class_map = Path(class_map) if class_map else None
        if self.class_map is not None:
            self.classes, self.values = load_class_map(self.class_map)
        for folder, what in ((self.images_root, "images"), (self.masks_root, "masks")):
            if not folder.is_dir():
                raise DatasetError(
                    f"{folder}: {what} folder not found (set it with --{what}-dir; "
                    f"the folder holds: {', '.join(sorted(p.name for p in self.root.iterdir())) or 'nothing'})"
                )
        images = _list_images(self.images_root)
        if mask_suffix == "auto":
            mask_suffix = choose_suffix([p.stem for p in images], {p.stem for p in _list_images(self.masks_root)})
        self.mask_suffix = mask_suffix
        masks_by_stem: dict[str, Path] = {}
        for p in _list_images(self.masks_root):
            if p.stem in masks_by_stem:
                self.problem("duplicate-name", p, f"two masks for one image ({masks_by_stem[p.stem].name} and {p.name})")
                continue
            masks_by_stem[p.stem] = p
        pairs: dict[str, Path] = {}
        stems: dict[str, Path] = {}
        missing = []
        for image in images:
            if image.stem in stems:
                self.problem("duplicate-name", image,
                             f"two images with one name ({stems[image.stem].name} and {image.name}) share one mask")
                continue
            stems[image.stem] = image
            mask = masks_by_stem.pop(image.stem + mask_suffix, None)
            if mask is None:
                missing.append(image)
            else:
                pairs[image.name] = mask
        for n, image in enumerate(missing):
            self.problem("missing-mask", image,
                         f"no mask for this image (looked for {self.masks_root / (image.stem + mask_suffix)}.*)"
                         + (f"; {len(missing) - 1} more images lack masks" if len(missing) > 1 and not n else ""))
        for n, orphan in enumerate(sorted(masks_by_stem.values())):
            stem = orphan.stem.removesuffix(mask_suffix) if orphan.stem.endswith(mask_suffix) else orphan.stem
            self.problem("missing-image", orphan, f"mask has no image (looked for {self.images_root}/{stem}.*)"
                         + (f"; {len(masks_by_stem) - 1} more masks lack images" if len(masks_by_stem) > 1 and not n else ""))
        if not pairs and missing:  # images, but none with its mask: say where the masks were looked for
            raise DatasetError(f"{self.masks_root}: none of the {len(missing)} images has a mask (for "
                               f"{missing[0].name} it would be {self.masks_root / (missing[0].stem + mask_suffix)}.*)")
        if not pairs:
            raise DatasetError(f"{self.images_root}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        self._masks = pairs
        self._set_images({name: self.images_root / name for name in pairs}, files)

    def data_roots(self) -> list[Path]:
        """The data folder, and the image folder when ``--images-dir`` names one."""
        return [self.root, *([self.images_root] if self._named_images_dir else [])]

    def mask_path(self, index: int) -> Path:
        return self._masks[self.files[index]]

    def _annotation_source(self, index: int) -> str:
        return str(self.mask_path(index))

    def _sidecar(self, mask_path: Path) -> dict[int, str] | None:
        path = mask_path.with_suffix(".json")
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self.problem("bad-json", path, f"not valid JSON ({e})")
            return {}
        if not isinstance(data, dict):
            self.problem("bad-json", path, 'a sidecar maps mask values to class names: {"1": "person", ...}')
            return {}
        return {parse_value(k, str(path)): str(v) for k, v in data.items()}

    def _label_of(self, value: int, names: dict[int, str], where: Path) -> int:
        name = names.get(value)
        if name is None:
            self.problem("unknown-label", where, f"mask value {value} has no class in the class map"
                         + (f" {self.class_map}" if self.class_map else " or sidecar"))
            return 0
        if name not in self.classes:
            self.problem("unknown-label", where, f"mask value {value} is class '{name}', not in classes {self.classes}")
            return 0
        return self.classes.index(name) + 1

    def _instances(self, index: int, height: int, width: int) -> Instances:
        mask_path = self.mask_path(index)
        ids_map = load_instance_mask(mask_path)
        if ids_map.shape != (height, width):
            raise DatasetError(
                f"{mask_path}: mask is {ids_map.shape[1]}x{ids_map.shape[0]} but its image "
                f"{self.image_path(index).name} is {width}x{height} (width x height)"
            )
        ids = np.unique(ids_map)
        ids = ids[ids != 0]
        masks = torch.from_numpy(ids_map[None, :, :] == ids[:, None, None]).to(torch.uint8)
        sidecar = self._sidecar(mask_path)
        if sidecar is None and not self.values:
            labels = torch.ones((len(ids),), dtype=torch.int64)
        else:
            names = {**self.values, **(sidecar or {})}
            where = mask_path.with_suffix(".json") if sidecar is not None else mask_path
            labels = torch.tensor([self._label_of(int(v), names, where) for v in ids], dtype=torch.int64)
            known = labels > 0  # instances without a class were reported; leave them out
            masks, labels, ids = masks[known], labels[known], ids[known.numpy()]
        return Instances(labels=labels, masks=masks, ids=[int(v) for v in ids])
