"""Owns converting any readable data set to COCO instances JSON (``segtune data convert --to coco``).

Masks are written as compressed RLE, category ids as the data set's own (so non-contiguous COCO ids
survive a round trip), and file names relative to the output file so the COCO reader finds the
images when it reads the file back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segtune.data.base import DetectionDataset, relative_name
from segtune.data.build import open_dataset
from segtune.data.coco_json import encode_masks, xyxy_to_xywh
from segtune.fileio import write_bytes, write_json

logger = logging.getLogger(__name__)


def to_coco(dataset: DetectionDataset, *, file_root: Path | None = None, image_dir: Path | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The COCO instances dict of ``dataset``, read as annotated (its transforms are not applied).

    Args:
        dataset: any reader; crowd regions are written only if it keeps them (``keep_crowd=True``).
        file_root: write ``file_name`` relative to this folder; None: the data set's own names.
        image_dir: where an image that exists only inside its annotation file (LabelMe's ``imageData``)
            is written out as a file, under the data set's name for it; None: not written.
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        ``{"images", "annotations", "categories"}``. Image ids are ``dataset.image_id(i)``; annotation
        ids count from 1; ``bbox`` is ``[x, y, width, height]``: the data set's own box where it has one,
        else the mask's pixel extent, which is the box COCO's ``toBbox`` gives its RLE; ``segmentation`` is compressed RLE with ``counts`` as str.
    """
    images, annotations = [], []
    for i in range(len(dataset)):
        array, target = dataset.load(i)  # load(), not [i]: no augmentation, pixels as on disk
        height, width = array.shape[:2]
        image_id = dataset.image_id(i)
        path = dataset.image_path(i)
        embedded = getattr(dataset, "embedded_image", lambda index: None)(i)
        if embedded is not None and image_dir is not None:
            path = image_dir / dataset.files[i]
            write_bytes(path, embedded)  # the file as it was embedded (EXIF and all)
        name = relative_name(path, file_root) if file_root is not None else dataset.files[i]
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        n = len(target["labels"])
        rles = encode_masks(target["masks"]) if "masks" in target else [None] * n
        boxes = xyxy_to_xywh(target["boxes"])
        keypoints = target.get("keypoints")
        for j in range(n):
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": dataset.category_ids[int(target["labels"][j]) - 1],
                "bbox": boxes[j],
                "area": float(target["area"][j]),
                "iscrowd": int(target["iscrowd"][j]),
            }
            if rles[j] is not None:
                ann["segmentation"] = rles[j]
            if keypoints is not None:
                points = keypoints[j]
                ann["keypoints"] = [float(v) if k % 3 < 2 else int(v) for k, v in enumerate(points.flatten().tolist())]
                ann["num_keypoints"] = int((points[:, 2] > 0).sum())
            annotations.append(ann)
        if progress is not None:
            progress(i + 1, len(dataset))
    categories = []
    for cat_id, name in zip(dataset.category_ids, dataset.classes):
        cat: dict[str, Any] = {"id": int(cat_id), "name": name}
        if dataset.keypoint_names:
            cat["keypoints"] = list(dataset.keypoint_names)
            cat["skeleton"] = [list(pair) for pair in dataset.skeleton or []]
        categories.append(cat)
    return {"images": images, "annotations": annotations, "categories": categories}


def convert_to_coco(data_cfg: Any, out: str | os.PathLike,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Write the data set ``data_cfg`` describes to ``out`` as COCO instances JSON (atomically).

    Crowd regions are kept. ``file_name`` values are relative to ``out``'s folder, so
    ``CocoDataset(out)`` finds the images with no ``image_root`` (with ``allow_outside_root`` when
    ``out`` is not in a folder above them: such paths are logged); images embedded in their annotation
    files (LabelMe ``imageData``) are written out under ``images/`` beside ``out``.

    Returns:
        ``{"images": n, "annotations": n, "categories": n}``.

    Raises:
        DatasetError: the data set cannot be read.
    """
    out = Path(out)
    dataset = open_dataset(data_cfg, keep_crowd=True)
    coco = to_coco(dataset, file_root=out.absolute().parent, image_dir=out.absolute().parent / "images",
                   progress=progress)
    write_json(out, coco)
    leaving = sum(1 for image in coco["images"] if image["file_name"].startswith("../"))
    if leaving:  # the data-root rule (segtune.data.root) will refuse them unless told
        logger.warning("%s: %d of its image paths lead outside its folder (e.g. %s); read it with "
                       "--allow-outside-root, or write it inside the data folder", out, leaving,
                       next(image["file_name"] for image in coco["images"] if image["file_name"].startswith("../")))
    return {key: len(coco[key]) for key in ("images", "annotations", "categories")}
