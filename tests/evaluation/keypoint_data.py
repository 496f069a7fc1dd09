"""A tiny COCO person-keypoints data set written in tmp_path: 3 keypoints with a skeleton, 64 x 64 images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64
KEYPOINT_NAMES = ["head", "left_hand", "right_hand"]
SKELETON = [[1, 2], [1, 3]]  # COCO style: 1-based keypoint indices
# Per image: people as (x0, y0, x1, y1) boxes; image 3 has none (a negative).
PEOPLE = {0: [(8, 6, 30, 50)], 1: [(6, 10, 28, 58), (36, 4, 60, 46)], 2: [(20, 12, 48, 60)], 3: []}


def person_keypoints(box: tuple[int, int, int, int], *, hide_right: bool = False) -> list[float]:
    """Head at the top middle, hands at mid height on each side; ``hide_right`` leaves the right hand unlabelled."""
    x0, y0, x1, y1 = box
    mid_y = (y0 + y1) / 2
    points = [((x0 + x1) / 2, y0 + 3, 2), (x0 + 2, mid_y, 2), (x1 - 2, mid_y, 0 if hide_right else 1)]
    flat: list[float] = []
    for x, y, v in points:
        flat += [float(x), float(y), v]
    return flat


def make_coco_keypoints(root: Path) -> Path:
    """Write ``root/images/img{i}.png`` and ``root/person_keypoints.json``; returns the JSON's path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i, boxes in PEOPLE.items():
        pixels = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            pixels[y0:y1, x0:x1] = (200, 80 + 60 * k, 40)
            keypoints = person_keypoints((x0, y0, x1, y1), hide_right=(i == 1 and k == 1))
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0), "keypoints": keypoints,
                "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0),
            })
        Image.fromarray(pixels).save(root / "images" / f"img{i}.png")
        images.append({"id": i + 1, "file_name": f"images/img{i}.png", "height": SIZE, "width": SIZE})
    categories = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": KEYPOINT_NAMES,
                   "skeleton": SKELETON}]
    path = root / "person_keypoints.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
