"""build_transforms: the flip moves image, boxes and masks together; outputs are plain float tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from segtune.data.masks_folder import MaskFolderDataset
from segtune.data.transforms import build_transforms

H, W = 20, 30
RECTS = {1: (2, 8, 3, 10), 2: (10, 18, 15, 28)}  # id -> (y0, y1, x0, x1); boxes (3,2,9,7) and (15,10,27,17)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "d"
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)).save(root / "PNGImages" / "a.png")
    mask = np.zeros((H, W), np.uint8)
    for inst, (y0, y1, x0, x1) in RECTS.items():
        mask[y0:y1, x0:x1] = inst
    Image.fromarray(mask, mode="L").save(root / "PedMasks" / "a_mask.png")
    Image.fromarray(rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)).save(root / "PNGImages" / "neg.png")
    Image.fromarray(np.zeros((H, W), np.uint8), mode="L").save(root / "PedMasks" / "neg_mask.png")
    return root


def _raw(root: Path, index: int = 0):
    image, target = MaskFolderDataset(root)[index]
    return image.as_subclass(torch.Tensor), {
        k: (v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v) for k, v in target.items()
    }


def _assert_plain(image, target) -> None:
    assert type(image) is torch.Tensor
    for key in ("boxes", "masks", "labels", "area", "iscrowd"):
        assert type(target[key]) is torch.Tensor, key
        assert not isinstance(target[key], tv_tensors.TVTensor), key


def test_flip_moves_image_boxes_and_masks_together(root: Path):
    raw_image, raw = _raw(root)
    ds = MaskFolderDataset(root, transforms=build_transforms(train=True, hflip_prob=1.0))
    image, target = ds[0]
    _assert_plain(image, target)

    assert image.dtype == torch.float32 and tuple(image.shape) == (3, H, W)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert torch.allclose(image, raw_image.flip(-1).float() / 255, atol=1e-6)

    assert target["masks"].dtype == torch.uint8 and tuple(target["masks"].shape) == (2, H, W)
    assert torch.equal(target["masks"], raw["masks"].flip(-1))

    # torchvision v2 flips XYXY boxes as x1' = W - x2, x2' = W - x1 (y unchanged)
    assert target["boxes"].dtype == torch.float32
    rb = raw["boxes"]
    expected = torch.stack([W - rb[:, 2], rb[:, 1], W - rb[:, 0], rb[:, 3]], dim=1)
    assert torch.equal(target["boxes"], expected)
    assert target["boxes"].tolist() == [[21.0, 2.0, 27.0, 7.0], [3.0, 10.0, 15.0, 17.0]]
    # and the flipped box still frames the flipped mask, to within the 1-px inclusive/exclusive offset
    from_masks = masks_to_boxes(target["masks"])
    assert (from_masks - target["boxes"]).abs().max() <= 1.0

    assert target["labels"].tolist() == [1, 1]
    assert torch.equal(target["area"], raw["area"]) and target["area"].dtype == torch.float32
    assert target["iscrowd"].tolist() == [0, 0]
    assert target["image_id"] == raw["image_id"] == 0


@pytest.mark.parametrize("transforms", [build_transforms(train=False), build_transforms(train=True, hflip_prob=0.0)],
                         ids=["eval", "train-no-flip"])
def test_no_flip(root: Path, transforms):
    raw_image, raw = _raw(root)
    image, target = MaskFolderDataset(root, transforms=transforms)[0]
    _assert_plain(image, target)
    assert image.dtype == torch.float32 and float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert torch.allclose(image, raw_image.float() / 255, atol=1e-6)
    assert torch.equal(target["boxes"], raw["boxes"])
    assert target["boxes"].tolist() == [[3.0, 2.0, 9.0, 7.0], [15.0, 10.0, 27.0, 17.0]]
    assert torch.equal(target["masks"], raw["masks"]) and target["masks"].dtype == torch.uint8
    assert torch.equal(target["area"], raw["area"])


def test_eval_pipeline_is_deterministic(root: Path):
    ds = MaskFolderDataset(root, transforms=build_transforms(train=False, hflip_prob=1.0))
    image, target = ds[0]
    assert target["boxes"].tolist()[0] == [3.0, 2.0, 9.0, 7.0]  # hflip_prob is ignored when not training


def test_random_flip_is_all_or_nothing(root: Path):
    raw_image, raw = _raw(root)
    ds = MaskFolderDataset(root, transforms=build_transforms(train=True, hflip_prob=0.5))
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        image, target = ds[0]
        flipped = torch.equal(target["masks"], raw["masks"].flip(-1))
        seen.add(flipped)
        if flipped:
            assert torch.allclose(image, raw_image.flip(-1).float() / 255, atol=1e-6)
            assert target["boxes"].tolist()[0] == [21.0, 2.0, 27.0, 7.0]
        else:
            assert torch.equal(target["masks"], raw["masks"])
            assert torch.allclose(image, raw_image.float() / 255, atol=1e-6)
            assert target["boxes"].tolist()[0] == [3.0, 2.0, 9.0, 7.0]
    assert seen == {True, False}


def test_flip_of_a_negative_keeps_the_empty_shapes(root: Path):
    ds = MaskFolderDataset(root, transforms=build_transforms(train=True, hflip_prob=1.0))
    assert ds.files[1] == "neg.png"
    image, target = ds[1]
    _assert_plain(image, target)
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, H, W)
    assert tuple(target["boxes"].shape) == (0, 4)
    assert tuple(target["masks"].shape) == (0, H, W)
    assert tuple(target["labels"].shape) == (0,) and tuple(target["area"].shape) == (0,)
    assert tuple(target["iscrowd"].shape) == (0,)


def test_sanitize_filters_the_per_instance_tensors_together():
    # An instance whose box is degenerate once it reaches the pipeline loses its label, area, iscrowd and mask.
    transforms = build_transforms(train=True, hflip_prob=1.0)
    image = tv_tensors.Image(torch.zeros((3, H, W), dtype=torch.uint8))
    masks = torch.zeros((2, H, W), dtype=torch.uint8)
    masks[0, 2:8, 3:10] = 1
    masks[1, 5, 5] = 1
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor([[3.0, 2.0, 9.0, 7.0], [5.0, 5.0, 5.0, 5.0]]),
                                          format="XYXY", canvas_size=(H, W)),
        "labels": torch.tensor([1, 2]),
        "masks": tv_tensors.Mask(masks),
        "image_id": 7,
        "area": torch.tensor([42.0, 1.0]),
        "iscrowd": torch.tensor([0, 1]),
    }
    _, out = transforms(image, target)
    assert out["boxes"].tolist() == [[21.0, 2.0, 27.0, 7.0]]
    assert out["labels"].tolist() == [1]
    assert out["area"].tolist() == [42.0]
    assert out["iscrowd"].tolist() == [0]
    assert tuple(out["masks"].shape) == (1, H, W) and int(out["masks"].sum()) == 42
    assert out["image_id"] == 7
