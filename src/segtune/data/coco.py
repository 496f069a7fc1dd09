"""Owns the COCO instances JSON data set: one annotation file listing images, annotations and categories.

Segmentations may be polygons (one annotation may have several parts), uncompressed RLE (``counts``
as a list) or compressed RLE (``counts`` as a string). Category ids need not be contiguous: the
categories, in ascending id order, become labels 1..C, and ``category_ids`` maps them back.
``iscrowd`` regions are kept for evaluation and left out of training, as COCO recipes do. A data set
where no annotation has a segmentation is box-only. Images listed with no annotation are negatives.
Each annotation's own ``bbox`` and ``area`` are kept as written, so evaluation on a COCO file scores
exactly what pycocotools scores on it; an annotation without them gets its mask's pixel extent and
pixel count.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval.core import mask as mask_utils

from segtune.data.base import FORMATS, WARNING, DetectionDataset, Instances, ProblemSink
from segtune.data.boxes import box_areas, mask_areas, mask_boxes
from segtune.data.coco_json import is_int as _is_int
from segtune.data.coco_json import (categories_by_id, has_top_level_keys, merge_split_files, not_classes, single_file,
                                    split_files)
from segtune.data.coco_json import read_json as _read_json
from segtune.data.images import max_pixels
from segtune.data.polygons import MAX_COORDINATE, is_coordinate
from segtune.data.root import is_file
from segtune.errors import DatasetError

def _key(value: Any) -> int | None:
    """``value`` if it can be an id (an int), else None: a list or dict in the JSON must not reach a dict lookup."""
    return value if _is_int(value) else None


def _is_number(value: Any) -> bool:
    """A coordinate: a finite number (not a bool) within polygons.MAX_COORDINATE pixels of 0."""
    return is_coordinate(value)


@dataclass(frozen=True)
class _Annotation:
    """One annotation as checked at construction: what ``_instances`` needs, nothing else."""

    id: int
    label: int
    crowd: int
    segmentation: list[list[float]] | dict[str, Any] | None  # None: none given (use the bbox)
    bbox: list[float] | None  # None: not given or not [x, y, w, h] (the mask's extent is used)
    area: float | None  # None: not given (mask pixels, else the box's area, are used)
    keypoints: list[float] | None


@dataclass(frozen=True)
class _Image:
    id: int
    file_name: str
    height: int | None
    width: int | None


def _default_image_root(annotation_file: Path, names: list[str]) -> Path:
    """Where the file names resolve: the JSON's folder, its parent (``annotations/x.json`` + images), or an
    ``images/`` folder beside either (a common export layout)."""
    here, up = annotation_file.parent, annotation_file.parent.parent
    folders = list(dict.fromkeys([here, up, here / "images", up / "images"]))
    relative = [name for name in names if not os.path.isabs(name)][:50]  # an absolute name tells nothing
    if not relative:
        return here
    for folder in folders:
        if any(is_file(folder / name) for name in relative):  # a few tell (100,000 stats would not)
            return folder
    raise DatasetError(
        f"{annotation_file}: none of its {len(names)} images (first: '{names[0]}') were found under "
        f"{' or '.join(str(f) for f in folders)}; pass --image-root with the folder its file_name paths start from"
    )


@FORMATS.register("coco")
class CocoDataset(DetectionDataset):
    """A detection/segmentation data set read from a COCO instances JSON file.

    Targets are described in :class:`~segtune.data.base.DetectionDataset`; ``image_id`` is COCO's own
    image id and instance names in messages are annotation ids.

    Args:
        annotation_file: the COCO instances JSON file.
        image_root: the folder ``file_name`` paths are relative to. Default: the JSON's folder if the
            images are found there, else its parent.
        transforms: a callable ``(image, target) -> (image, target)``, e.g. a ``transforms.v2`` pipeline.
        files: restrict the data set to these ``file_name`` values, in this order (a split).
        keep_crowd, sink: see :class:`~segtune.data.base.DetectionDataset`.

    Raises:
        DatasetError: the file is missing, is not JSON, lacks the COCO lists, has bad categories, or
            none of its images exist.
    """

    format = "coco"

    @classmethod
    def detect(cls, path: Path, data_cfg: Any) -> bool:
        if path.is_dir():  # a split export (train/ valid/ test/, a COCO file in each), or one COCO file inside
            return split_files(path) is not None or single_file(path) is not None
        return path.is_file() and path.suffix.lower() == ".json" and has_top_level_keys(path, ("images", "annotations"))

    @classmethod
    def from_config(cls, data_cfg: Any, path: Path) -> dict[str, Any]:
        return {"image_root": data_cfg.image_root}

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        *,
        image_root: str | os.PathLike | None = None,
        transforms: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None,
        files: list[str] | None = None,
        keep_crowd: bool = True,
        sink: ProblemSink | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__(transforms=transforms, keep_crowd=keep_crowd, sink=sink, allow_outside_root=allow_outside_root)
        self.annotation_file = Path(annotation_file)
        roles = None
        split_jsons = split_files(self.annotation_file) if self.annotation_file.is_dir() else None
        if self.annotation_file.is_dir() and split_jsons is None:
            inside = single_file(self.annotation_file)  # an export folder: one COCO file beside images/
            if inside is None:
                raise DatasetError(f"{self.annotation_file}: a folder, but neither a COCO split export (train/ and "
                                   "valid/ or test/, each with one COCO JSON) nor a folder holding one COCO JSON "
                                   "(itself or in annotations/); pass the annotation file itself")
            self.annotation_file = inside
        if split_jsons is not None:  # a split export: one COCO file per split sub-folder
            data, roles = merge_split_files(split_jsons)
            self._json_files = list(split_jsons.values())
            image_root = self.annotation_file if image_root is None else image_root
        else:
            data = _read_json(self.annotation_file)
            self._json_files = [self.annotation_file]
        used = {_key(a.get("category_id")) for a in data["annotations"] if isinstance(a, dict)}
        self._read_categories(data["categories"], used)
        images = self._read_images(data["images"])
        if not images:
            raise DatasetError(f"{self.annotation_file}: 'images' lists no usable image")
        names = [image.file_name for image in images.values()]
        self.root = Path(image_root) if image_root is not None else _default_image_root(self.annotation_file, names)
        self._annotations = self._read_annotations(data["annotations"], images)
        del data  # the parsed JSON can be large; keep only what _instances needs

        missing = [image for image in images.values() if not is_file(self.root / image.file_name)]
        for n, image in enumerate(missing):
            self.problem("missing-image", self.annotation_file,
                         f"image {image.id} points to '{image.file_name}', which is missing under {self.root}"
                         + (f" ({len(missing)} images are missing)" if len(missing) > 1 and not n else ""))
        gone = {image.id for image in missing}
        if len(gone) == len(images):
            raise DatasetError(f"{self.annotation_file}: none of its {len(images)} images exist under {self.root}")
        self._images = {image.file_name: image for image in images.values() if image.id not in gone}
        self._set_images({name: self.root / name for name in self._images}, files)
        if roles is not None:  # a split export's folders: valid/ is evaluated, test/ beside it held out
            self._set_given_split(roles, "split folders")

    def source_files(self, index: int) -> list[Path]:
        return [self.image_path(index), *self._json_files]

    def data_roots(self) -> list[Path]:
        """The image root, and the folder of the COCO file (the folder above, for one in ``annotations/``)."""
        folder = self.annotation_file.parent
        return [self.root, folder.parent if folder.name == "annotations" else folder]

    def _entry_of(self, name: str, path: Path) -> tuple[str, str]:
        return str(self.annotation_file), f"image {self._images[name].id} file_name '{name}'"

    # --- reading the JSON -----------------------------------------------------------------------

    def _read_categories(self, categories: list[Any], used: set[int | None]) -> None:
        """Categories in ascending id order become labels 1..C, except those that are no class to learn:
        a background category (labelme2coco's ``_background_``), and a category that is only the
        ``supercategory`` of others and labels nothing (Roboflow's id 0). Duplicate names get their id added."""
        where = self.annotation_file
        by_id = categories_by_id(categories, where)
        self._dropped = not_classes(by_id, used)
        for cat_id, why in self._dropped.items():
            self.problem("not-a-class", where, f"category {cat_id}: {why}; not trained as a class", WARNING)
        ordered = [by_id[i] for i in sorted(by_id) if i not in self._dropped]
        if not ordered:
            raise DatasetError(f"{where}: no category is a class to learn (only {', '.join(self._dropped.values())})")
        names = [cat["name"] for cat in ordered]
        for cat in ordered:
            if names.count(cat["name"]) > 1:  # per-class AP and predictions.json name classes: keep them apart
                self.problem("duplicate-name", where, f"category name '{cat['name']}' is used by several ids; "
                             f"category {cat['id']} is called '{cat['name']} ({cat['id']})'", WARNING)
        self.classes = [f"{c['name']} ({c['id']})" if names.count(c["name"]) > 1 else c["name"] for c in ordered]
        self.category_ids = [cat["id"] for cat in ordered]
        self._labels = {cat_id: i + 1 for i, cat_id in enumerate(self.category_ids)}
        for cat in ordered:  # torchvision's keypoint heads predict one K for all classes: take the first
            if isinstance(cat.get("keypoints"), list) and cat["keypoints"]:
                self.keypoint_names = [str(k) for k in cat["keypoints"]]
                skeleton, k = cat.get("skeleton") or [], len(self.keypoint_names)
                if not (isinstance(skeleton, list) and all(
                        isinstance(pair, list) and len(pair) == 2 and all(_is_int(v) and 1 <= v <= k for v in pair)
                        for pair in skeleton)):
                    self.problem("bad-keypoints", where, f"category {cat['id']}: 'skeleton' must list pairs of "
                                 f"keypoint numbers 1..{k}, got {skeleton!r:.60}; ignored", WARNING)
                    skeleton = []
                self.skeleton = [list(pair) for pair in skeleton]
                break

    def _read_images(self, entries: list[Any]) -> dict[int, _Image]:
        where = self.annotation_file
        images: dict[int, _Image] = {}
        by_name: dict[str, int] = {}
        for n, entry in enumerate(entries):
            if not (isinstance(entry, dict) and _is_int(entry.get("id")) and isinstance(entry.get("file_name"), str)):
                self.problem("bad-entry", where, f"images[{n}] needs an integer 'id' and a 'file_name' string, "
                             f"got {entry!r:.80}; skipped")
                continue
            image_id = entry["id"]
            name = entry["file_name"].replace("\\", "/")  # files written on Windows
            if image_id in images:
                self.problem("duplicate-id", where, f"image id {image_id} is listed twice "
                             f"('{images[image_id].file_name}' and '{name}'); the second is ignored")
                continue
            if name in by_name:
                self.problem("duplicate-name", where, f"'{name}' is listed twice (image ids {by_name[name]} and "
                             f"{image_id}); the second is ignored")
                continue
            height, width = entry.get("height"), entry.get("width")
            if (height, width) != (None, None) and not (_is_int(height) and _is_int(width) and height > 0
                                                        and width > 0 and height * width <= max_pixels()):
                # evaluation sizes masks by these without decoding the image: never a size no image can have
                self.problem("bad-entry", where, f"image {image_id} '{name}': height {height!r:.30} and width "
                             f"{width!r:.30} are not an image size; the file's own size is used", WARNING)
                height = width = None
            images[image_id] = _Image(image_id, name, height, width)
            by_name[name] = image_id
        return images

    def _read_annotations(self, entries: list[Any], images: dict[int, _Image]) -> dict[int, list[_Annotation]]:
        where = self.annotation_file
        # Box-only means no annotation has a segmentation; in a mask data set the few without one use their box.
        self.has_masks = any(isinstance(a, dict) and a.get("segmentation") for a in entries)
        k = len(self.keypoint_names or [])
        if not k:
            k = max((len(a["keypoints"]) // 3 for a in entries
                     if isinstance(a, dict) and isinstance(a.get("keypoints"), list)), default=0)
        self.num_keypoints = k
        by_image: dict[int, list[_Annotation]] = {}
        seen: set[int] = set()
        dangling = sum(1 for a in entries if isinstance(a, dict) and _key(a.get("image_id")) not in images)
        boxed: list[int] = []
        for n, ann in enumerate(entries):
            if not isinstance(ann, dict) or not _is_int(ann.get("id")):
                self.problem("bad-entry", where, f"annotations[{n}] needs an integer 'id', got {ann!r:.80}; skipped")
                continue
            aid = ann["id"]
            if aid in seen:
                self.problem("duplicate-id", where, f"annotation id {aid} is listed twice; the second is ignored")
                continue
            seen.add(aid)
            if _key(ann.get("image_id")) not in images:
                self.problem("dangling-id", where, f"annotation {aid}: image_id {ann.get('image_id')!r:.40} points at "
                             f"no image in 'images'; skipped"
                             + (f" ({dangling} annotations point at nothing)" if dangling > 1 else ""))
                dangling = 0  # say the total once
                continue
            label = self._labels.get(_key(ann.get("category_id")))
            if label is None and _key(ann.get("category_id")) in self._dropped:
                continue  # said once, for the category
            if label is None:
                self.problem("unknown-label", where, f"annotation {aid}: category_id {ann.get('category_id')!r} is not "
                             f"in 'categories' (ids: {', '.join(map(str, self.category_ids))}); skipped")
                continue
            segmentation = self._check_segmentation(ann.get("segmentation"), aid) if self.has_masks else None
            if segmentation is False:
                continue
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                bbox = None
                if segmentation is None:  # the box is all this annotation has
                    self.problem("bad-box", where, f"annotation {aid}: 'bbox' must be [x, y, width, height], "
                                 f"got {ann.get('bbox')!r:.60}; skipped")
                    continue
            elif segmentation is None and self.has_masks:
                boxed.append(aid)
            keypoints = self._check_keypoints(ann.get("keypoints"), aid)
            by_image.setdefault(ann["image_id"], []).append(
                _Annotation(aid, label, 1 if ann.get("iscrowd") else 0, segmentation, bbox,
                            float(ann["area"]) if _is_number(ann.get("area")) else None, keypoints))
        if boxed:
            self.problem("no-segmentation", where,
                         f"{len(boxed)} annotation(s) have no segmentation (ids {', '.join(map(str, boxed[:5]))}"
                         f"{', ...' if len(boxed) > 5 else ''}) while others have; their bbox rectangle is used as "
                         f"the mask", WARNING)
        return by_image

    def _check_segmentation(self, seg: Any, aid: int) -> list[list[float]] | dict[str, Any] | None | bool:
        """The usable part of ``seg``; None when there is none, False when it is unusable (reported)."""
        where = self.annotation_file
        if seg is None or seg == []:
            return None
        if isinstance(seg, dict):
            size, counts = seg.get("size"), seg.get("counts")
            if (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)
                    and (isinstance(counts, str) or (isinstance(counts, list) and all(_is_int(c) for c in counts)))):
                if isinstance(counts, str) or sum(counts) == size[0] * size[1]:
                    return seg
                self.problem("bad-rle", where, f"annotation {aid}: RLE counts add up to {sum(counts)} pixels, "
                             f"but its size {size[0]}x{size[1]} (height x width) has {size[0] * size[1]}; skipped")
                return False
            self.problem("bad-rle", where, f"annotation {aid}: an RLE segmentation needs 'size': [height, width] "
                         f"and 'counts' (a list of integers or a string); skipped")
            return False
        if isinstance(seg, list):
            good = []
            for n, poly in enumerate(seg):
                if (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                        and all(_is_number(v) for v in poly)):
                    good.append(poly)
                    continue
                odd = next((v for v in poly if not _is_number(v)), None) if isinstance(poly, list) else None
                if odd is not None:
                    self.problem("bad-polygon", where, f"annotation {aid}: polygon {n} has {odd!r:.30}, not a finite "
                                 f"pixel coordinate (at most {MAX_COORDINATE:g}); dropped")
                    continue
                got = (f"{len(poly)} numbers" if isinstance(poly, list) else type(poly).__name__)
                self.problem("bad-polygon", where, f"annotation {aid}: polygon {n} has {got}; a polygon is a flat "
                             f"list of at least 3 (x, y) points; dropped")
            return good or False
        self.problem("bad-segmentation", where, f"annotation {aid}: 'segmentation' must be a list of polygons or "
                     f"an RLE object, got {type(seg).__name__}; skipped")
        return False

    def _check_keypoints(self, keypoints: Any, aid: int) -> list[float] | None:
        if keypoints is None or not self.num_keypoints:
            return None
        k = self.num_keypoints
        if isinstance(keypoints, list) and len(keypoints) == 3 * k and all(_is_number(v) for v in keypoints):
            return keypoints
        self.problem("bad-keypoints", self.annotation_file,
                     f"annotation {aid}: 'keypoints' must be {3 * k} numbers ({k} x, y, visibility triples), "
                     f"got {keypoints!r:.60}; treated as unlabelled")
        return None

    # --- per image ------------------------------------------------------------------------------

    def _image_id_of(self, name: str) -> int:
        return self._images[name].id

    def _annotation_source(self, index: int) -> str:
        return str(self.annotation_file)

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        """``(height, width)`` from the JSON when it gives them (as torchvision's COCO reader does), else the file."""
        image = self._images[self.files[index]]
        if image.height and image.width:
            return image.height, image.width
        return super().get_height_and_width(index)

    def _instances(self, index: int, height: int, width: int) -> Instances:
        image = self._images[self.files[index]]
        anns = self._annotations.get(image.id, [])
        if None not in (image.height, image.width) and (image.height, image.width) != (height, width):
            self.problem("size-mismatch", self.annotation_file,
                         f"image {image.id} '{image.file_name}' is {width}x{height} (width x height) on disk but the "
                         f"JSON says {image.width}x{image.height}; its annotations are skipped")
            anns = []
        masks: list[np.ndarray] = []
        kept: list[_Annotation] = []
        for ann in anns:
            if self.has_masks:
                mask = self._decode(ann, image, height, width)
                if mask is None:
                    continue
                masks.append(mask)
            kept.append(ann)
        n = len(kept)
        raw = Instances(
            labels=torch.tensor([a.label for a in kept], dtype=torch.int64),
            iscrowd=torch.tensor([a.crowd for a in kept], dtype=torch.int64),
            ids=[a.id for a in kept],
        )
        # The file's own bbox and area, as COCO's evaluation reads them (float64, not clamped); an
        # annotation without them gets the mask's pixel extent and pixel count (or its box's area).
        xywh = torch.tensor([a.bbox if a.bbox is not None else [0.0] * 4 for a in kept],
                            dtype=torch.float64).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        given_box = torch.tensor([a.bbox is not None for a in kept], dtype=torch.bool)
        if self.has_masks:
            raw.masks = (torch.from_numpy(np.stack(masks)) if n else torch.zeros((0, height, width))).to(torch.uint8)
            if not bool(given_box.all()):  # the masks' extent only where the file gives no box
                boxes = torch.where(given_box[:, None], boxes, mask_boxes(raw.masks).to(torch.float64))
        raw.boxes = boxes
        if any(a.area is None for a in kept):  # likewise the pixel count (or the box's area) only where needed
            fallback_area = mask_areas(raw.masks).to(torch.float64) if self.has_masks else box_areas(boxes)
            raw.area = torch.tensor([a.area if a.area is not None else float(fallback_area[i])
                                     for i, a in enumerate(kept)], dtype=torch.float64)
        else:
            raw.area = torch.tensor([a.area for a in kept], dtype=torch.float64)
        if self.num_keypoints:
            points = torch.zeros((n, self.num_keypoints, 3), dtype=torch.float32)
            for i, ann in enumerate(kept):
                if ann.keypoints is not None:
                    points[i] = torch.tensor(ann.keypoints, dtype=torch.float32).reshape(-1, 3)
            raw.keypoints = points
        return raw

    def _decode(self, ann: _Annotation, image: _Image, height: int, width: int) -> np.ndarray | None:
        """``uint8[H, W]`` mask of one annotation, or None when its RLE does not fit the image (reported)."""
        seg = ann.segmentation
        if seg is None:  # a mask data set with a box-only annotation: the rectangle stands in for the mask
            x, y, w, h = ann.bbox
            mask = np.zeros((height, width), dtype=np.uint8)
            mask[max(int(np.floor(y)), 0):max(int(np.ceil(y + h)), 0),
                 max(int(np.floor(x)), 0):max(int(np.ceil(x + w)), 0)] = 1
            return mask
        if isinstance(seg, list):  # polygons, drawn at the image's real size; parts of one object are merged
            return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, height, width)))
        if list(seg["size"]) != [height, width]:
            self.problem("size-mismatch", self.annotation_file,
                         f"annotation {ann.id}: its RLE is {seg['size'][1]}x{seg['size'][0]} (width x height) but "
                         f"image {image.id} '{image.file_name}' is {width}x{height}; skipped")
            return None
        counts = seg["counts"]
        try:
            rle = (mask_utils.frPyObjects(seg, height, width) if isinstance(counts, list)
                   else {"size": [height, width], "counts": counts.encode("ascii")})
            return mask_utils.decode(rle)
        except (ValueError, RuntimeError, UnicodeEncodeError) as e:  # how faster-coco-eval rejects bad counts
            self.problem("bad-rle", self.annotation_file, f"annotation {ann.id}: RLE cannot be decoded ({e}); skipped")
            return None
