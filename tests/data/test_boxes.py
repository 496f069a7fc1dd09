"""The one box convention (pixel extent) on hand-made masks, through every place that makes boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from faster_coco_eval.core import mask as mask_utils
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from segtune.data import CocoDataset, CopyPaste, MaskFolderDataset, to_coco
from segtune.data.boxes import mask_areas, mask_boxes
from segtune.data.coco_json import encode_masks
from segtune.data.transforms import build_transforms
from segtune.evaluation import dataset_ground_truth
from segtune.fileio import write_json


def _mask(h: int, w: int, rows: slice, cols: slice) -> torch.Tensor:
    m = torch.zeros((h, w), dtype=torch.uint8)
    m[rows, cols] = 1
    return m


def test_a_mask_over_columns_2_to_9_has_x1_2_and_x2_10() -> None:
    masks = torch.stack([_mask(12, 16, slice(4, 7), slice(2, 10)),  # rows 4..6, columns 2..9
                         _mask(12, 16, slice(0, 12), slice(5, 6)),  # one column wide, full height
                         torch.zeros((12, 16), dtype=torch.uint8)])  # empty
    assert mask_boxes(masks).tolist() == [[2, 4, 10, 7], [5, 0, 6, 12], [0, 0, 0, 0]]
    assert mask_areas(masks).tolist() == [24, 12, 0]
    # COCO's own toBbox of the RLE agrees ([x, y, w, h] = [2, 4, 8, 3])
    assert [list(map(float, mask_utils.toBbox(r))) for r in encode_masks(masks[:2])] == [[2, 4, 8, 3], [5, 0, 1, 12]]


def _folder(root: Path) -> Path:
    """One 12x16 image: instance 1 over rows 4..6, columns 2..9; instance 2 a one-pixel-wide line (column 13)."""
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir()
    mask = np.zeros((12, 16), dtype=np.uint8)
    mask[4:7, 2:10] = 1
    mask[1:11, 13] = 2
    Image.fromarray(np.full((12, 16, 3), 90, dtype=np.uint8)).save(root / "PNGImages" / "a.png")
    Image.fromarray(mask, mode="L").save(root / "PedMasks" / "a_mask.png")
    return root


def test_readers_ground_truth_and_exporter_use_the_pixel_extent(tmp_path: Path) -> None:
    ds = MaskFolderDataset(_folder(tmp_path / "data"))
    image, target = ds[0]
    # the one-pixel-wide object is kept (width 1), not dropped as zero-width
    assert target["boxes"].tolist() == [[2, 4, 10, 7], [13, 1, 14, 11]]
    assert target["area"].tolist() == [24, 10]

    gt = dataset_ground_truth(ds, ds.classes)
    assert [a["bbox"] for a in gt["annotations"]] == [[2, 4, 8, 3], [13, 1, 1, 10]]

    coco = to_coco(ds)
    assert [a["bbox"] for a in coco["annotations"]] == [[2, 4, 8, 3], [13, 1, 1, 10]]
    assert [a["area"] for a in coco["annotations"]] == [24, 10]
    # and the COCO file read back gives the same boxes
    (tmp_path / "data" / "a.png").write_bytes((tmp_path / "data" / "PNGImages" / "a.png").read_bytes())
    coco["images"][0]["file_name"] = "a.png"
    back = CocoDataset(write_json(tmp_path / "data" / "c.json", coco))
    assert back[0][1]["boxes"].tolist() == target["boxes"].tolist()


def test_flips_resizes_and_copy_paste_keep_boxes_on_the_mask_extent(tmp_path: Path) -> None:
    ds = MaskFolderDataset(_folder(tmp_path / "data"))
    image, target = ds[0]
    flipped_image, flipped = T.RandomHorizontalFlip(p=1.0)(image, target)
    assert flipped["boxes"].tolist() == mask_boxes(flipped["masks"]).tolist() == [[6, 4, 14, 7], [2, 1, 3, 11]]

    resized_image, resized = T.Resize((24, 32))(image, target)
    # a plain resize scales the numbers; the pixel extent scales with them exactly (2x here)
    assert resized["boxes"].tolist() == mask_boxes(resized["masks"]).tolist() == [[4, 8, 20, 14], [26, 2, 28, 22]]

    # segtune's training pipeline (its resampling transforms refit boxes to the masks)
    train = build_transforms(train=True, augment=["hflip", "lsj"], lsj_size=32, lsj_scale=(0.5, 1.5))
    torch.manual_seed(0)
    for _ in range(5):
        _, out = train(image, {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in target.items()})
        assert out["boxes"].tolist() == mask_boxes(out["masks"]).tolist()

    float_image = image.float() / 255
    batch = [(float_image, target), (float_image, {**target, "masks": tv_tensors.Mask(target["masks"].clone())})]
    _, pasted = CopyPaste(seed=1)(batch)
    for out in pasted:
        assert out["boxes"].tolist() == mask_boxes(out["masks"]).tolist()
        assert out["area"].tolist() == mask_areas(out["masks"]).tolist()
