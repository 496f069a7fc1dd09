"""A Mask R-CNN that really detects: trained once per test session on an easy synthetic set.

The end-to-end, export, predict and evaluation tests check what comes out of a model; on a model that
detects nothing those checks compare empty lists and cannot fail. ``shapes_folder`` writes 64x64 images,
each (but the first) with a red rectangle ("box") and a green disc ("disc") on a plain grey background; the
first image has no object. ``train_detector`` trains segtune's CPU recipe (the ``cpu-scratch`` Mask R-CNN,
from random initialisation, small heads) on it for :data:`STEPS` steps through the ``segtune`` command: about
a minute on 2 CPU cores, after which it finds both shapes in the held-out test images (bbox AP50 1.0, AP about
0.5 measured 2026-12-07). Tests that want the "nothing detected" case use an untrained model on purpose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from segtune.cli.main import main

CLASSES = ["box", "disc"]
SIZE = 64
STEPS = 200
#: What the fixture's run must reach on its test split (measured 2026-12-07: bbox AP 0.55 / AP50 1.0,
#: segm AP 0.52 / AP50 1.0); well below the measured figures, far above what a model that finds nothing gets.
MIN_AP50, MIN_AP = 0.8, 0.35
BOX_COLOUR, DISC_COLOUR, BACKGROUND = (230, 40, 40), (40, 230, 40), (30, 30, 30)


def shapes_folder(root: Path, n: int = 16, seed: int = 0) -> Path:
    """A mask folder (Penn-Fudan layout with a class map): image 0 empty, every other image one box and one
    disc in opposite halves (which half is random). Returns ``root``."""
    rng = np.random.default_rng(seed)
    (root / "PNGImages").mkdir(parents=True, exist_ok=True)
    (root / "PedMasks").mkdir(parents=True, exist_ok=True)
    half = SIZE // 2
    for i in range(n):
        image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
        mask = Image.new("L", (SIZE, SIZE), 0)
        if i:
            draw_shapes(image, mask, rng, half)
        image.save(root / "PNGImages" / f"im{i:02d}.png")
        mask.save(root / "PedMasks" / f"im{i:02d}_mask.png")
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": CLASSES, "values": {1: "box", 2: "disc"}}))
    return root


def draw_shapes(image: Image.Image, mask: Image.Image, rng: np.random.Generator,
                half: int) -> list[tuple[str, list[float]]]:
    """Draw a box and a disc; return them as ``(class, [x0, y0, x1, y1])``."""
    pixels, values = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    box_left = bool(rng.integers(0, 2))
    w, h = (int(v) for v in rng.integers(14, half - 4, 2))
    x = int(rng.integers(2, half - w)) + (0 if box_left else half)
    y = int(rng.integers(2, SIZE - h - 2))
    pixels.rectangle([x, y, x + w - 1, y + h - 1], fill=BOX_COLOUR)
    values.rectangle([x, y, x + w - 1, y + h - 1], fill=1)
    r = int(rng.integers(7, half // 2 - 2))
    cx = int(rng.integers(r + 2, half - r - 2)) + (half if box_left else 0)
    cy = int(rng.integers(r + 2, SIZE - r - 2))
    pixels.ellipse([cx - r, cy - r, cx + r, cy + r], fill=DISC_COLOUR)
    values.ellipse([cx - r, cy - r, cx + r, cy + r], fill=2)
    return [("box", [x, y, x + w, y + h]), ("disc", [cx - r, cy - r, cx + r + 1, cy + r + 1])]


def shapes_image(path: Path, seed: int,
                 size: tuple[int, int] = (SIZE, SIZE)) -> tuple[Path, list[tuple[str, list[float]]]]:
    """One more image like the set's (a box and a disc in its top-left square of the set's size) of another
    size ``(height, width)``, with no mask file: for predict and export. Returns the path and its objects."""
    image = Image.new("RGB", (size[1], size[0]), BACKGROUND)
    objects = draw_shapes(image, Image.new("L", image.size), np.random.default_rng(seed), SIZE // 2)
    image.save(path)
    return path, objects


#: The training flags: the cpu-scratch recipe's model with small heads and 64-px input (up to 128 px on the
#: longer side, so images 64 px high of any width up to 128 keep the set's scale), a fixed number of
#: steps (no fitting to a time limit), no augmentation beyond flips, nothing slow written.
TRAIN_FLAGS = [
    "--preset", "cpu-scratch", "--fit-to-time-limit", "false", "--epochs", "1", "--max-iters-per-epoch", str(STEPS),
    "--repeat", "70", "--test-size", "4", "--optimizer", "adamw", "--lr", "0.003", "--warmup-iters", "10",
    "--amp", "none", "--print-freq", "50",
    "model.min_size=64", "model.max_size=128", "model.fpn_channels=64", "model.box_head_dim=128",
    "model.mask_head_channels=64", "model.mask_hidden=64", "model.box_batch_size_per_image=32",
    "train.augment=[hflip]", "train.tensorboard=false", "train.val_loss=false",
]


@dataclass(frozen=True)
class Detector:
    """A trained run: its data folder, run folder, the test split's image paths and the epoch's metrics."""

    data: Path
    run: Path
    test_images: list[Path]
    metrics: dict

    @property
    def best(self) -> Path:
        return self.run / "weights" / "best.pt"


def train_detector(root: Path) -> Detector:
    data = shapes_folder(root / "data")
    run = root / "runs" / "shapes"
    code = main(["train", "--data", str(data), "--out", str(run), "--class-map", str(data / "classes.yaml"),
                 *TRAIN_FLAGS])
    assert code == 0, f"training the test detector failed (exit {code}); see {run / 'train.log'}"
    metrics = json.loads((run / "metrics.json").read_text())[-1]["metrics"]
    test = [data / "PNGImages" / name for name in json.loads((run / "split.json").read_text())["test"]]
    return Detector(data, run, test, metrics)


def truth(image: Path) -> list[tuple[str, list[float]]]:
    """The objects of one image of the set, from its mask: ``(class, [x0, y0, x1, y1])`` (box as COCO's
    corners, right and bottom exclusive)."""
    mask = np.asarray(Image.open(image.parent.parent / "PedMasks" / f"{image.stem}_mask.png"))
    objects = []
    for value in (1, 2):
        ys, xs = np.nonzero(mask == value)
        if len(xs):
            objects.append((CLASSES[value - 1], [float(xs.min()), float(ys.min()), float(xs.max() + 1),
                                                 float(ys.max() + 1)]))
    return objects


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def found(objects: list[tuple[str, list[float]]], detections: list[tuple[str, list[float]]],
          min_iou: float = 0.5) -> list[bool]:
    """For each true object, whether a detection of its class overlaps it by ``min_iou``."""
    return [any(name == d_name and iou(box, d_box) >= min_iou for d_name, d_box in detections)
            for name, box in objects]
