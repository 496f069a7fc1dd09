"""Three tiny images with known rectangles, as a mask folder: the reference other readers must match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from segtune.data.masks_folder import MaskFolderDataset

H, W = 32, 40
CLASSES = ["cat", "dog"]
# (y0, y1, x0, x1) as numpy slices, so mask[y0:y1, x0:x1] is the object.
RECT_A = (2, 8, 3, 10)
RECT_B = (12, 30, 20, 37)
RECT_C = (5, 21, 0, 16)  # touches the left edge


def pixels(seed: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def reference_mask_folder(root: Path) -> MaskFolderDataset:
    """a.png: cat RECT_A + dog RECT_B (seed 1); b.png: no object (seed 2); c.png: cat RECT_C (seed 3)."""
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir(parents=True)
    contents = {"a": (1, {1: RECT_A, 2: RECT_B}), "b": (2, {}), "c": (3, {3: RECT_C})}
    for stem, (seed, rects) in contents.items():
        Image.fromarray(pixels(seed)).save(root / "PNGImages" / f"{stem}.png")
        mask = np.zeros((H, W), np.uint8)
        for value, (y0, y1, x0, x1) in rects.items():
            mask[y0:y1, x0:x1] = value
        Image.fromarray(mask, mode="L").save(root / "PedMasks" / f"{stem}_mask.png")
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": CLASSES, "values": {1: "cat", 2: "dog", 3: "cat"}}))
    return MaskFolderDataset(root, class_map=root / "classes.yaml")


def assert_same_targets(ds, reference) -> None:
    """``ds`` gives exactly the images and targets of ``reference`` (dtypes, values, image ids, canvas)."""
    assert len(ds) == len(reference) == 3
    for i in range(3):
        image, target = ds[i]
        ref_image, ref_target = reference[i]
        assert torch.equal(image, ref_image)
        assert set(target) == set(ref_target) == {"boxes", "labels", "masks", "area", "iscrowd", "image_id"}
        for key in ("boxes", "labels", "masks", "area", "iscrowd"):
            assert target[key].dtype == ref_target[key].dtype, key
            assert torch.equal(target[key].as_subclass(torch.Tensor), ref_target[key].as_subclass(torch.Tensor)), key
        assert target["image_id"] == ref_target["image_id"] == i
        assert target["boxes"].canvas_size == (H, W)
