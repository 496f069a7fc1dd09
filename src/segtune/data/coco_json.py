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
