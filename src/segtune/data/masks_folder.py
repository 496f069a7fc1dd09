"""Owns the instance-mask-folder data set: an images folder plus a masks folder (the Penn-Fudan layout).

Each mask pixel holds an instance id (0 = background); every instance is class 1. A mask is found
by name: ``<masks_dir>/<image stem><mask_suffix>.<any image extension>``, never by sort order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from segtune.data.images import IMAGE_EXTENSIONS, load_instance_mask, load_rgb, read_size
from segtune.errors import DatasetError

logger = logging.getLogger(__name__)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class MaskFolderDataset(torch.utils.data.Dataset):
    """A detection/segmentation data set read from an images folder and an instance-masks folder.

    ``dataset[i]`` returns ``(image, target)`` as torchvision's detection models expect:

    - ``image``: ``tv_tensors.Image`` uint8[3, H, W] (the transforms turn it into float)
    - ``boxes``: ``tv_tensors.BoundingBoxes`` float32[N, 4], XYXY, absolute pixels
    - ``labels``: int64[N]; ``masks``: ``tv_tensors.Mask`` uint8[N, H, W]
    - ``image_id``: int; ``area``: float32[N] (mask pixel count, as COCO uses); ``iscrowd``: int64[N]

    An image whose mask has no instance gives N = 0 and trains as a negative. An instance whose box
    has zero width or height (a one-pixel line) is dropped with a warning.

    Args:
        root: the data set folder.
        images_dir, masks_dir: sub-folders of ``root``.
        mask_suffix: appended to an image's stem to name its mask.
        transforms: a callable ``(image, target) -> (image, target)``, e.g. a ``transforms.v2`` pipeline.
        files: restrict the data set to these image file names, in this order (a split).

    Raises:
        DatasetError: the folder or a sub-folder is missing, an image has no mask or a mask no image.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        images_dir: str = "PNGImages",
        masks_dir: str = "PedMasks",
        mask_suffix: str = "_mask",
        transforms: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None,
        files: list[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.images_root = self.root / images_dir
        self.masks_root = self.root / masks_dir
        self.mask_suffix = mask_suffix
        self.transforms = transforms
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: data folder does not exist")
        for folder, what in ((self.images_root, "images"), (self.masks_root, "masks")):
            if not folder.is_dir():
                raise DatasetError(
                    f"{folder}: {what} folder not found (set it with --{what}-dir; "
                    f"the folder holds: {', '.join(sorted(p.name for p in self.root.iterdir())) or 'nothing'})"
                )
        images = _list_images(self.images_root)
        masks_by_stem: dict[str, Path] = {}
        for p in _list_images(self.masks_root):
            if p.stem in masks_by_stem:
                raise DatasetError(f"{p}: two masks for one image ({masks_by_stem[p.stem].name} and {p.name})")
            masks_by_stem[p.stem] = p
        pairs: dict[str, Path] = {}
        missing = []
        for image in images:
            mask = masks_by_stem.pop(image.stem + mask_suffix, None)
            if mask is None:
                missing.append(image)
            else:
                pairs[image.name] = mask
        if missing:
            raise DatasetError(
                f"{missing[0]}: no mask for this image (looked for {self.masks_root / (missing[0].stem + mask_suffix)}.*)"
                + (f"; {len(missing) - 1} more images lack masks" if len(missing) > 1 else "")
            )
        if masks_by_stem:
            orphan = sorted(masks_by_stem.values())[0]
            raise DatasetError(
                f"{orphan}: mask has no image (looked for {self.images_root}/"
                f"{orphan.stem.removesuffix(mask_suffix) if orphan.stem.endswith(mask_suffix) else orphan.stem}.*)"
                + (f"; {len(masks_by_stem) - 1} more masks lack images" if len(masks_by_stem) > 1 else "")
            )
        if not pairs:
            raise DatasetError(f"{self.images_root}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        self.all_files = sorted(pairs)
        self._masks = pairs
        if files is None:
            files = self.all_files
        unknown = [f for f in files if f not in pairs]
        if unknown:
            raise DatasetError(f"{self.images_root / unknown[0]}: listed in the split but not in the data set")
        self.files = list(files)
        # image_id is the index in the whole folder, so it is the same in every split.
        self._ids = {name: i for i, name in enumerate(self.all_files)}
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, index: int) -> Path:
        return self.images_root / self.files[index]

    def mask_path(self, index: int) -> Path:
        return self._masks[self.files[index]]

    def image_id(self, index: int) -> int:
        return self._ids[self.files[index]]

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index``, read from the file header only."""
        return read_size(self.image_path(index))

    def load(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Decode image ``index`` and its mask into ``uint8[H, W, 3]`` and a plain-tensor target."""
        image_path, mask_path = self.image_path(index), self.mask_path(index)
        image = load_rgb(image_path)
        ids_map = load_instance_mask(mask_path)
        if ids_map.shape != image.shape[:2]:
            raise DatasetError(
                f"{mask_path}: mask is {ids_map.shape[1]}x{ids_map.shape[0]} but its image "
                f"{image_path.name} is {image.shape[1]}x{image.shape[0]} (width x height)"
            )
        ids = np.unique(ids_map)
        ids = ids[ids != 0]
        masks = torch.from_numpy(ids_map[None, :, :] == ids[:, None, None]).to(torch.uint8)
        boxes = masks_to_boxes(masks) if len(ids) else torch.zeros((0, 4), dtype=torch.float32)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not keep.all():
            dropped = [int(i) for i in ids[~keep.numpy()]]
            key = f"{mask_path}"
            if key not in self._warned:
                self._warned.add(key)
                logger.warning(
                    "%s: dropped instance(s) %s: zero-width or zero-height box", mask_path, dropped
                )
            masks, boxes = masks[keep], boxes[keep]
        n = len(boxes)
        target = {
            "boxes": boxes.to(torch.float32),
            "labels": torch.ones((n,), dtype=torch.int64),
            "masks": masks,
            "image_id": self.image_id(index),
            "area": masks.flatten(1).sum(1).to(torch.float32) if n else torch.zeros((0,), dtype=torch.float32),
            "iscrowd": torch.zeros((n,), dtype=torch.int64),
        }
        return image, target

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        array, target = self.load(index)
        image = tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1).contiguous())
        height, width = array.shape[:2]
        target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(height, width))
        target["masks"] = tv_tensors.Mask(target["masks"])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def verify(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Decode every image and mask once, so bad files fail before training starts.

        Returns the number of instances. Raises :class:`DatasetError` naming the first bad file.
        """
        total = 0
        for i in range(len(self)):
            _, target = self.load(i)
            total += len(target["boxes"])
            if progress is not None:
                progress(i + 1, len(self))
        return total
