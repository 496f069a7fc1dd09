"""Owns COCO JSON files: reading one (a checked parse, a fast look at its top-level keys) and the
encodings shared by data conversion and evaluation (RLE masks, XYWH boxes).

It lives in ``data`` so that both the converter (``data``) and COCO scoring (``evaluation``, which may
import ``data`` but not the other way round) write masks and boxes the same way.
"""

from __future__ import annotations

import json
import mmap
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval.core import mask as mask_utils

from segtune.errors import DatasetError

# A JSON string (escapes included), a bracket or a colon: enough to follow the nesting and spot keys.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]:]', re.DOTALL)


def has_top_level_keys(path: Path, keys: Sequence[str]) -> bool:
    """Whether the JSON object in ``path`` has all ``keys`` at its top level.

    Scans the file (memory-mapped) only as far as it must, without building the JSON: a COCO file of
    hundreds of megabytes is parsed once, by the reader, not again just to tell its format.
    """
    wanted = {json.dumps(k).encode() for k in keys}
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start = 3 if data[:3] == b"\xef\xbb\xbf" else 0  # a UTF-8 byte-order mark
            first = re.compile(rb"\s*").match(data, start).end()
            if data[first:first + 1] != b"{":
                return False
            depth, previous = 0, b""
            for match in _TOKEN.finditer(data, first):
                token = match.group()
                if token in (b"{", b"["):
                    depth += 1
                elif token in (b"}", b"]"):
                    depth -= 1
                    if depth == 0:
                        break
                elif token == b":" and depth == 1:
                    wanted.discard(previous)
                    if not wanted:
                        return True
                previous = token
    except (OSError, ValueError):  # unreadable, or empty (mmap refuses a zero-length file)
        return False
    return False


def read_json(path: Path) -> dict[str, Any]:
    """Parse a COCO instances file, checking it has the ``images``, ``annotations`` and ``categories`` lists."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (UnicodeDecodeError, OSError) as e:
        raise DatasetError(f"{path}: cannot read the annotation file ({e})") from None
    lists = ("images", "annotations", "categories")
    missing = [k for k in lists if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing:
        raise DatasetError(f"{path}: {', '.join(repr(k) for k in missing)} missing or not a list; a COCO "
                           f"instances file is a JSON object with 'images', 'annotations' and 'categories' lists")
    return data




def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """RLE-encode binary masks ``uint8/bool[N, H, W]`` as COCO JSON (``counts`` as str)."""
    if len(masks) == 0:
        return []
    array = np.asfortranarray(masks.to(torch.uint8).permute(1, 2, 0).cpu().numpy())
    rles = mask_utils.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def xyxy_to_xywh(boxes: torch.Tensor) -> list[list[float]]:
    """``float[N, 4]`` XYXY boxes as COCO's ``[x, y, width, height]`` lists."""
    b = boxes.to(torch.float64).cpu()
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], dim=1).tolist()


#: Sub-folder names of a split export (Roboflow's COCO export: train/ valid/ test/, each with its JSON),
#: by the role each plays: trained on, evaluated every epoch, held out.
SPLIT_FOLDERS = {"train": ("train",), "val": ("valid", "val", "validation"), "test": ("test",)}


def split_files(folder: Path) -> dict[str, Path] | None:
    """``{"train": json, "val": json, "test": json}`` of a folder of split sub-folders that each hold one
    COCO file (Roboflow's ``_annotations.coco.json``); None when ``folder`` is not laid out so."""
    found: dict[str, Path] = {}
    for role, names in SPLIT_FOLDERS.items():
        for name in names:
            jsons = sorted(p for p in (folder / name).glob("*.json") if has_top_level_keys(p, ("images", "annotations"))) \
                if (folder / name).is_dir() else []
            if len(jsons) == 1:
                found[role] = jsons[0]
                break
    return found if "train" in found and len(found) > 1 else None


def single_file(folder: Path, most: int = 4) -> Path | None:
    """The one COCO instances file of an export folder (``annotations.json`` or CVAT's
    ``annotations/instances_default.json`` beside ``images/``), looked for in ``folder`` and its
    ``annotations/`` (also when ``folder`` holds only other JSON files, such as a project file); None
    when there is none or more than one in the first place that has one. A folder with more than ``most`` JSON
    files is a folder of per-image files (LabelMe), not read through."""
    for where in (folder, folder / "annotations"):
        jsons = sorted(where.glob("*.json")) if where.is_dir() else []
        if not jsons or len(jsons) > most:
            continue
        coco = [p for p in jsons if has_top_level_keys(p, ("images", "annotations"))]
        if len(coco) > 1:
            return None  # several instances files: the user must name one
        if coco:
            return coco[0]
        # only other JSON here (a project or meta file): the export's file may be in annotations/
    return None


def merge_split_files(files: dict[str, Path]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """One COCO dict of a split export's files, and the file names of each role.

    ``file_name`` values get their sub-folder in front (``valid/img.jpg``: the merged set's root is the
    export folder) and image and annotation ids are renumbered so the files' own ids cannot collide.
    The files must list the same categories (exporters write them into every file).

    Raises:
        DatasetError: a file is unreadable, or the files disagree on the categories.
    """
    merged: dict[str, Any] = {"images": [], "annotations": [], "categories": None}
    roles: dict[str, list[str]] = {}
    for role, path in files.items():
        data = read_json(path)
        cats = sorted(((c.get("id"), c.get("name")) for c in data["categories"] if isinstance(c, dict)), key=repr)
        if merged["categories"] is None:
            merged["categories"], first, first_cats = data["categories"], path, cats
        elif cats != first_cats:
            raise DatasetError(f"{path}: its categories differ from those of {first}; the splits of one data set "
                               "must name the same classes with the same ids")
        prefix = path.parent.name
        new_id: dict[Any, int] = {}
        for image in data["images"]:
            if not isinstance(image, dict):
                continue
            name = f"{prefix}/{image.get('file_name')}"
            if not is_int(image.get("id")):  # kept as it is, so the reader names it (an id is an integer)
                merged["images"].append({**image, "file_name": name})
                continue
            new_id[image["id"]] = len(merged["images"]) + 1
            merged["images"].append({**image, "id": new_id[image["id"]], "file_name": name})
            roles.setdefault(role, []).append(name)
        for ann in data["annotations"]:
            if isinstance(ann, dict) and is_int(ann.get("image_id")) and ann["image_id"] in new_id:
                merged["annotations"].append({**ann, "id": len(merged["annotations"]) + 1,
                                              "image_id": new_id[ann["image_id"]]})
    return merged, roles


#: Category names that stand for "no object" in exporters' output: never trained as a class.
BACKGROUND_NAMES = ("_background_", "__background__")


def categories_by_id(categories: list[Any], where: Path) -> dict[int, dict[str, Any]]:
    """A file's categories by id, checked: each a mapping with an integer ``id`` and a ``name``, ids unique."""
    by_id: dict[int, dict[str, Any]] = {}
    for n, cat in enumerate(categories):
        if not isinstance(cat, dict) or not is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise DatasetError(f"{where}: categories[{n}] needs an integer 'id' and a 'name' string, got {cat!r:.80}")
        if cat["id"] in by_id:
            raise DatasetError(f"{where}: category id {cat['id']} is listed twice "
                               f"('{by_id[cat['id']]['name']}' and '{cat['name']}')")
        by_id[cat["id"]] = cat
    if not by_id:
        raise DatasetError(f"{where}: 'categories' is empty; a COCO file names at least one category")
    return by_id


def not_classes(by_id: dict[int, dict[str, Any]], used: set[int | None]) -> dict[int, str]:
    """The categories that are no class to learn, and why: a background category (labelme2coco's
    ``_background_``), and one that is only the ``supercategory`` of others and labels nothing (Roboflow's id 0)."""
    parents = {c["supercategory"] for c in by_id.values()  # a name; anything else in the field names no category
               if isinstance(c.get("supercategory"), str) and c["supercategory"] != c["name"]}
    dropped: dict[int, str] = {}
    for cat_id, cat in sorted(by_id.items()):
        if cat["name"] in BACKGROUND_NAMES:
            dropped[cat_id] = f"'{cat['name']}' is the background, not a class"
        elif cat["name"] in parents and cat_id not in used and len(by_id) > 1:
            dropped[cat_id] = f"'{cat['name']}' only groups other categories (their supercategory)"
    return dropped


def is_int(value: Any) -> bool:
    """An int that is not a bool (JSON's true is no id)."""
    return isinstance(value, int) and not isinstance(value, bool)
