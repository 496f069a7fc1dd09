"""Owns what every data-set format shares: the target dict, degenerate-instance rules, splits and problems.

A format reader (mask folders, COCO JSON, YOLO txt, LabelMe JSON) subclasses :class:`DetectionDataset`
and only says which image files exist and which raw instances each one has; this class turns those
into the target dict torchvision's detection models expect, so every format yields the same thing.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from segtune.data.boxes import box_areas, is_solid, mask_areas, mask_boxes
from segtune.data.images import load_rgb, read_size
from segtune.data.root import outside_roots
from segtune.errors import DatasetError
from segtune.registry import Registry

logger = logging.getLogger(__name__)

ERROR, WARNING = "error", "warning"

#: Data-set readers by format name. Each class registered here implements ``detect(path)`` and
#: ``from_config(data_cfg, path)`` (Detectron2's from_config idea: the reader never sees a config).
FORMATS: Registry[type[DetectionDataset]] = Registry("data format")


@dataclass(frozen=True)
class Problem:
    """One defect found in a data set: ``path: message``, an ``error`` (stops training) or a ``warning``."""

    severity: str
    kind: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Instances:
    """The raw instances of one image, as a reader found them (before degenerate ones are dropped).

    Attributes:
        labels: int64[N], 1-based contiguous class labels.
        masks: uint8[N, H, W] binary masks, or None for a box-only data set.
        boxes: float[N, 4] XYXY pixels as the data set gives them (COCO's ``bbox``), or None to take
            each mask's pixel extent (:func:`~segtune.data.boxes.mask_boxes`). Required without masks.
        area: float[N] as the data set gives it (COCO's ``area``), or None: mask pixels, else box area.
        iscrowd: int64[N] (1 = a crowd region: scored as "ignore" in evaluation, left out of training).
        keypoints: float32[N, K, 3] (x, y, visibility), or None.
        ids: how the data set names each instance in messages (mask values, annotation ids), or None
            for 1-based positions.
    """

    labels: torch.Tensor
    masks: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    area: torch.Tensor | None = None
    iscrowd: torch.Tensor | None = None
    keypoints: torch.Tensor | None = None
    ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ProblemSink:
    """Collects problems (the data doctor) or acts on them (training: errors raise, warnings log once)."""

    collect: bool = False
    problems: list[Problem] = field(default_factory=list)
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def report(self, problem: Problem) -> None:
        if self.collect:
            self.problems.append(problem)
            return
        if problem.severity == ERROR:
            raise DatasetError(str(problem))
        key = (problem.path, problem.kind)
        if key not in self._seen:  # one warning per file and kind, not one per epoch
            self._seen.add(key)
            logger.warning("%s", problem)


class DetectionDataset(torch.utils.data.Dataset):
    """Base of every format reader. ``dataset[i]`` returns ``(image, target)``:

    - ``image``: ``tv_tensors.Image`` uint8[3, H, W] (the transforms turn it into float)
    - ``boxes``: ``tv_tensors.BoundingBoxes`` float32[N, 4], XYXY, absolute pixels, clipped to the
      image: the data set's own boxes where it has them (COCO's ``bbox``), else each mask's pixel
      extent (:mod:`segtune.data.boxes`: a mask over columns 2..9 has x1 = 2, x2 = 10)
    - ``labels``: int64[N], 1-based; ``masks``: ``tv_tensors.Mask`` uint8[N, H, W] (mask formats only)
    - ``image_id``: int (stable across splits); ``area``: float32[N] (the data set's own where it has
      them, as COCO's polygon areas; else mask pixels, else box area)
    - ``iscrowd``: int64[N]; ``keypoints``: float32[N, K, 3] (keypoint data sets only)

    :meth:`load` gives the same target untransformed, unclipped and in float64: the annotation as
    written, which evaluation's ground truth is built from.

    An image with no instance gives N = 0 and trains as a negative. With ``keep_crowd`` (evaluation,
    the data doctor, export) every annotation is kept, as COCO's evaluation keeps it; without it
    (training) crowd regions, instances whose mask has no pixels and boxes with zero width or height
    are left out, as COCO recipes do. Unusable instances are reported as warnings either way.

    Subclasses set ``root``, ``classes`` and call :meth:`_set_images`, and implement :meth:`_instances`.
    """

    #: The format's short name (``--format``).
    format: str = ""
    root: Path
    classes: list[str]
    #: The data set's own id of each class (COCO category ids); label ``i`` is ``category_ids[i - 1]``.
    category_ids: list[int]
    #: Whether targets carry ``masks`` (False for box-only data, e.g. a COCO file without segmentations).
    has_masks: bool = True
    keypoint_names: list[str] | None = None
    skeleton: list[list[int]] | None = None
    #: The data set's own split, when it has one (a YOLO YAML's ``train``/``val``, Roboflow's split
    #: folders): ``{"train": [...], "test": [...]}`` (``test`` is what is evaluated every epoch; a
    #: ``holdout`` list, the data set's test split beside its validation split, is used for neither),
    #: and ``given_split_source`` says where it comes from. None: segtune draws a random split.
    given_split: dict[str, list[str]] | None = None
    given_split_source: str = ""

    @classmethod
    def detect(cls, path: Path, data_cfg: Any) -> bool:
        """Whether ``path`` (a file or folder given as ``--data``) looks like this format."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, data_cfg: Any, path: Path) -> dict[str, Any]:
        """The format's own keyword arguments, read from a ``DataConfig`` section."""
        return {}

    def __init__(self, *, transforms: Callable | None = None, keep_crowd: bool = True,
                 sink: ProblemSink | None = None, allow_outside_root: bool = False) -> None:
        self.transforms = transforms
        self.allow_outside_root = allow_outside_root
        self.decoded_cache: Any = None  # a segtune.data.decoded_cache.DecodedCache, set on a training view
        self.keep_crowd = keep_crowd
        self.sink = sink if sink is not None else ProblemSink()
        self.category_ids = []

    # --- for subclasses -------------------------------------------------------------------------

    def problem(self, kind: str, path: str | os.PathLike, message: str, severity: str = ERROR) -> None:
        self.sink.report(Problem(severity, kind, str(path), message))

    def _set_images(self, paths: dict[str, Path], files: Sequence[str] | None) -> None:
        """Register the data set's images (relative name -> path) and select the split ``files``."""
        if not paths:
            raise DatasetError(f"{self.root}: no images found")
        paths = self._inside_data_root(paths)
        self._paths = paths
        self.all_files = sorted(paths)
        self._ids = {name: i for i, name in enumerate(self.all_files)}
        self.select(files)
        if not self.category_ids:
            self.category_ids = list(range(1, len(self.classes) + 1))

    def data_roots(self) -> list[Path]:
        """The folders images may be read from (the data root): the data set's folder; a format that
        names more folders itself (a YOLO YAML's ``path`` and image folders) adds them."""
        return [self.root]

    def _inside_data_root(self, paths: dict[str, Path]) -> dict[str, Path]:
        """``paths`` without the images outside :meth:`data_roots` (links resolved), each reported as an
        error naming its annotation entry; with ``allow_outside_root`` all kept and counted in one warning."""
        outside = outside_roots(paths, self.data_roots())
        if not outside:
            return paths
        roots = " or ".join(str(root) for root in dict.fromkeys(self.data_roots()))
        if self.allow_outside_root:
            name, real = next(iter(outside.items()))
            self.problem("outside-root", self.root, f"{len(outside)} image(s) lie outside the data root {roots}, "
                         f"read as --allow-outside-root asks (e.g. {name} -> {real})", WARNING)
            return paths
        for name, real in outside.items():
            where, entry = self._entry_of(name, paths[name])
            self.problem("outside-root", where, f"{entry} resolves to {real}, outside the data root {roots}; left "
                         "out (images are read only under the data root: pass --allow-outside-root if your "
                         "layout keeps them elsewhere)")
        inside = {name: path for name, path in paths.items() if name not in outside}
        if not inside:
            raise DatasetError(f"{self.root}: all {len(paths)} images lie outside the data root {roots} (e.g. "
                               f"{next(iter(outside.values()))}); pass --allow-outside-root if your layout keeps "
                               "them elsewhere")
        return inside

    def _entry_of(self, name: str, path: Path) -> tuple[str, str]:
        """``(file, entry)`` naming where image ``name`` (at ``path``) was listed, for messages; formats whose
        annotation names its images (COCO ``file_name``, LabelMe ``imagePath``) say which entry."""
        return str(path), f"image '{name}'"

    def _set_given_split(self, roles: dict[str, list[str]], where: str) -> None:
        """Record the data set's own split from the file names each of its ``train``, ``val`` and ``test``
        parts lists: ``val`` (else ``test``) is evaluated, ``train`` trains, and ``test`` beside ``val`` is
        held out. Names left out for defects are in no split; without ``train`` and another part, none."""
        evaluated = "val" if roles.get("val") else "test" if roles.get("test") else None
        if evaluated is None or not roles.get("train"):
            return
        keep = set(self.all_files)
        held = [n for key, names in roles.items() if key not in ("train", evaluated) for n in names]
        split = {"train": roles["train"], "test": roles[evaluated], **({"holdout": held} if held else {})}
        self.given_split = {k: sorted(n for n in names if n in keep) for k, names in split.items()}
        self.given_split_source = f"{where}: train / {evaluated}" + (" (test held out)" if held else "")

    def _image_id_of(self, name: str) -> int:
        """The image id of file ``name``; formats with their own ids (COCO) override this."""
        return self._ids[name]

    def _instances(self, index: int, height: int, width: int) -> Instances:
        raise NotImplementedError

    # --- public ---------------------------------------------------------------------------------

    def select(self, files: Sequence[str] | None) -> None:
        """Restrict the data set to ``files`` (names from ``all_files``), in that order; None = all."""
        files = list(self.all_files if files is None else files)
        unknown = [f for f in files if f not in self._paths]
        if unknown:
            where = getattr(self, "images_root", self.root)  # where the reader looks for image files
            raise DatasetError(f"{where / unknown[0]}: listed in the split but not in the data set"
                               + (f" ({len(unknown) - 1} more)" if len(unknown) > 1 else ""))
        self.files = files

    def view(self, files: Sequence[str] | None = None, *, transforms: Callable | None = None,
             keep_crowd: bool | None = None, sink: ProblemSink | None = None) -> DetectionDataset:
        """The same data set restricted to ``files`` (a split), with its own transforms, crowd rule and sink.

        A shallow copy: the parsed annotations are shared, nothing is read again, so a run opens its
        data once and takes its train and test splits as views of it.
        """
        out = copy.copy(self)
        out.select(files)
        out.transforms = transforms
        out.decoded_cache = None  # a cache belongs to the view it was made for (its images may be shrunk)
        if keep_crowd is not None:
            out.keep_crowd = keep_crowd
        if sink is not None:
            out.sink = sink
        return out

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, index: int) -> Path:
        return self._paths[self.files[index]]

    def image_id(self, index: int) -> int:
        return self._image_id_of(self.files[index])

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index`` as shown (EXIF orientation applied), from the file header only."""
        return read_size(self.image_path(index))

    def read_image(self, index: int) -> np.ndarray:
        """The pixels of image ``index``, ``uint8[H, W, 3]``, EXIF orientation applied; a format whose
        images may live elsewhere (LabelMe's embedded ``imageData``) overrides this and the size."""
        return load_rgb(self.image_path(index))

    def load(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Decode image ``index`` into ``uint8[H, W, 3]`` and its target of plain tensors."""
        image = self.read_image(index)
        height, width = image.shape[:2]
        raw = self._instances(index, height, width)
        return image, self._target(index, raw, height, width)

    def annotation(self, index: int) -> tuple[int, int, dict[str, Any]]:
        """``(height, width, target)`` of image ``index`` as :meth:`load` gives them, without decoding its
        pixels (the size comes from the file header): what evaluation's ground truth needs."""
        height, width = self.get_height_and_width(index)
        return height, width, self._target(index, self._instances(index, height, width), height, width)

    def _target(self, index: int, raw: Instances, height: int, width: int) -> dict[str, Any]:
        """The target of one image as annotated: float64 ``boxes`` and ``area`` exactly as the data set
        gives them (or in the convention of :mod:`segtune.data.boxes`), not clamped to the image.

        For training (``keep_crowd=False``) crowd regions, instances with no mask pixels and boxes
        with no width or height inside the image are dropped; for evaluation every annotation stays,
        as COCO's evaluation keeps them. Either way the unusable ones are reported once.
        """
        n = len(raw)
        masks = raw.masks
        if raw.boxes is not None:
            boxes = raw.boxes.to(torch.float64).reshape(-1, 4)
        elif masks is not None:
            boxes = mask_boxes(masks).to(torch.float64)
        else:
            boxes = torch.zeros((0, 4), dtype=torch.float64)
        if raw.area is not None:
            area = raw.area.to(torch.float64)
        else:
            area = (mask_areas(masks) if masks is not None else box_areas(boxes)).to(torch.float64)
        empty = mask_areas(masks) == 0 if masks is not None else torch.zeros((n,), dtype=torch.bool)
        iscrowd = raw.iscrowd if raw.iscrowd is not None else torch.zeros((n,), dtype=torch.int64)
        flat = ~empty & ~is_solid(clamp_boxes(boxes, height, width))
        where = self._annotation_source(index)
        use = "left out of training" if self.keep_crowd else "dropped"
        if empty.any():
            self.problem("empty-mask", where, f"instance(s) {_names(empty, raw.ids)} have no mask pixels; {use}", WARNING)
        if flat.any():
            self.problem("degenerate-box", where,
                         f"instance(s) {_names(flat, raw.ids)}: zero-width or zero-height box; {use}", WARNING)
        keep = torch.ones((n,), dtype=torch.bool) if self.keep_crowd else ~(empty | flat) & (iscrowd == 0)
        target: dict[str, Any] = {
            "boxes": boxes[keep],
            "labels": raw.labels[keep].to(torch.int64),
            "image_id": self.image_id(index),
            "area": area[keep],
            "iscrowd": iscrowd[keep].to(torch.int64),
        }
        if masks is not None:
            target["masks"] = masks[keep].to(torch.uint8)
        if raw.keypoints is not None:
            target["keypoints"] = raw.keypoints[keep].to(torch.float32)
        return target

    def _annotation_source(self, index: int) -> str:
        """The file to name in a per-image problem (a mask, a label file, or the image)."""
        return str(self.image_path(index))

    def source_files(self, index: int) -> list[Path]:
        """Every file image ``index`` and its annotation are read from (what the data check's cache
        watches); formats with more than one override this."""
        return [self.image_path(index), Path(self._annotation_source(index))]

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        cache = self.decoded_cache
        image, target = cache.get(self, index) if cache is not None else self.decode(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def decode(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """Image ``index`` and its target as the transforms take them (what the decoded-image cache keeps)."""
        array, target = self.load(index)
        image = tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1).contiguous())
        height, width = array.shape[:2]
        # What a model trains on: float32, inside the image (load() keeps the annotation as written).
        target["boxes"] = tv_tensors.BoundingBoxes(clamp_boxes(target["boxes"], height, width).to(torch.float32),
                                                   format="XYXY", canvas_size=(height, width))
        target["area"] = target["area"].to(torch.float32)
        if "masks" in target:
            target["masks"] = tv_tensors.Mask(target["masks"])
        return image, target


def clamp_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """XYXY ``boxes`` clipped to a ``width`` x ``height`` image (a copy)."""
    out = boxes.clone()
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


def _names(flags: torch.Tensor, ids: list[int] | None) -> list[int]:
    positions = [int(i) for i in torch.nonzero(flags).flatten()]
    return [ids[i] for i in positions] if ids is not None else [i + 1 for i in positions]


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with forward slashes (file names in splits and results)."""
    return Path(os.path.relpath(path, root)).as_posix()
