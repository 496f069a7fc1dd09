"""build_transforms: each preset moves image, boxes, masks and keypoints together; outputs are plain float tensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from segtune.config import DataConfig
from segtune.data.boxes import mask_boxes
from segtune.data.build import build_dataset
from segtune.data.masks_folder import MaskFolderDataset
from segtune.data.transforms import build_transforms, keypoint_flip_map
from segtune.errors import ConfigError

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
    assert target["boxes"].tolist() == [[20.0, 2.0, 27.0, 8.0], [2.0, 10.0, 15.0, 18.0]]
    # and the flipped box is exactly the flipped mask's pixel extent (segtune.data.boxes)
    assert torch.equal(mask_boxes(target["masks"]), target["boxes"])

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
    assert target["boxes"].tolist() == [[3.0, 2.0, 10.0, 8.0], [15.0, 10.0, 28.0, 18.0]]
    assert torch.equal(target["masks"], raw["masks"]) and target["masks"].dtype == torch.uint8
    assert torch.equal(target["area"], raw["area"])


def test_eval_pipeline_is_deterministic(root: Path):
    ds = MaskFolderDataset(root, transforms=build_transforms(train=False, hflip_prob=1.0))
    image, target = ds[0]
    assert target["boxes"].tolist()[0] == [3.0, 2.0, 10.0, 8.0]  # hflip_prob is ignored when not training


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
            assert target["boxes"].tolist()[0] == [20.0, 2.0, 27.0, 8.0]
        else:
            assert torch.equal(target["masks"], raw["masks"])
            assert torch.allclose(image, raw_image.float() / 255, atol=1e-6)
            assert target["boxes"].tolist()[0] == [3.0, 2.0, 10.0, 8.0]
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
        "boxes": tv_tensors.BoundingBoxes(torch.tensor([[3.0, 2.0, 10.0, 8.0], [5.0, 5.0, 5.0, 5.0]]),
                                          format="XYXY", canvas_size=(H, W)),
        "labels": torch.tensor([1, 2]),
        "masks": tv_tensors.Mask(masks),
        "image_id": 7,
        "area": torch.tensor([42.0, 1.0]),
        "iscrowd": torch.tensor([0, 1]),
    }
    _, out = transforms(image, target)
    assert out["boxes"].tolist() == [[20.0, 2.0, 27.0, 8.0]]
    assert out["labels"].tolist() == [1]
    assert out["area"].tolist() == [42.0]
    assert out["iscrowd"].tolist() == [0]
    assert tuple(out["masks"].shape) == (1, H, W) and int(out["masks"].sum()) == 42
    assert out["image_id"] == 7


# --- presets on a hand-made target ----------------------------------------------------------------
# A 48x64 image with two rectangles (masks, matching boxes) and, optionally, three keypoints each.

KH, KW = 48, 64
KRECTS = ((4, 20, 6, 30), (24, 44, 36, 60))  # (y0, y1, x0, x1), exclusive ends
KP_NAMES = ("left_eye", "right_eye", "nose")
KPOINTS = [[[10.0, 8.0, 2.0], [20.0, 8.0, 2.0], [15.0, 12.0, 1.0]],
           [[40.0, 28.0, 2.0], [50.0, 28.0, 2.0], [0.0, 0.0, 0.0]]]  # the second nose is unlabelled


def _sample(*, keypoints: bool = False, masks: bool = True):
    gen = torch.Generator().manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, KH, KW), dtype=torch.uint8, generator=gen))
    m = torch.zeros((len(KRECTS), KH, KW), dtype=torch.uint8)
    for i, (y0, y1, x0, x1) in enumerate(KRECTS):
        m[i, y0:y1, x0:x1] = 1
    boxes = mask_boxes(m)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(KH, KW)),
        "labels": torch.tensor([1, 2]),
        "image_id": 3,
        "iscrowd": torch.zeros(2, dtype=torch.int64),
    }
    if masks:
        target["masks"] = tv_tensors.Mask(m)
        target["area"] = m.flatten(1).sum(1).float()
    else:
        target["area"] = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if keypoints:
        target["keypoints"] = torch.tensor(KPOINTS)
    return image, target


def _check_consistent(image, target, *, masks: bool = True) -> None:
    """Every per-instance field has one row per box; boxes frame masks; area and keypoints agree."""
    _, h, w = image.shape
    assert image.dtype == torch.float32 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    n = len(target["boxes"])
    for key in ("labels", "area", "iscrowd", "keypoints", "masks"):
        if key in target:
            assert type(target[key]) is torch.Tensor and len(target[key]) == n, key
    boxes = target["boxes"]
    assert boxes.dtype == torch.float32 and type(boxes) is torch.Tensor
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h).all()
    if masks:
        assert target["masks"].dtype == torch.uint8 and tuple(target["masks"].shape) == (n, h, w)
        if n:
            assert torch.equal(mask_boxes(target["masks"]), boxes)
        assert torch.equal(target["area"], target["masks"].flatten(1).sum(1).float())
    else:
        assert torch.allclose(target["area"], (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    if "keypoints" in target:
        points = target["keypoints"]
        assert points.dtype == torch.float32 and tuple(points.shape[1:]) == (3, 3)
        visible = points[..., 2] > 0
        assert (points[~visible] == 0).all()  # COCO: an unlabelled point is (0, 0, 0)
        for i in range(n):  # every keypoint was inside its rectangle, so it stays inside its box
            x, y = points[i, visible[i], 0], points[i, visible[i], 1]
            assert ((x >= boxes[i, 0] - 2) & (x <= boxes[i, 2] + 2)).all()
            assert ((y >= boxes[i, 1] - 2) & (y <= boxes[i, 3] + 2)).all()


SMALL = {"multiscale_sizes": (24, 40, 72), "multiscale_max_size": 200, "lsj_size": (40, 56), "lsj_scale": (0.5, 2.0)}


PIPELINES = [["hflip"], ["multiscale"], ["lsj"], ["photometric"], ["photometric", "hflip", "multiscale"],
             ["lsj", "hflip", "photometric"]]
# copypaste is batch-level (tests/data/test_collate.py); per image it must leave the sample as it is
CASES = [(a, k) for a in PIPELINES for k in (False, True)] + [(["copypaste"], False)]


@pytest.mark.parametrize("augment,keypoints", CASES,
                         ids=lambda v: "+".join(v) if isinstance(v, list) else ("keypoints" if v else "masks"))
def test_every_preset_keeps_boxes_masks_and_keypoints_consistent(augment, keypoints):
    transforms = build_transforms(train=True, augment=augment, hflip_prob=0.5,
                                  keypoint_names=KP_NAMES if keypoints else None, **SMALL)
    sizes = set()
    for seed in range(8):
        torch.manual_seed(seed)
        image, target = transforms(*_sample(keypoints=keypoints))
        _assert_plain(image, target)
        _check_consistent(image, target)
        assert target["image_id"] == 3
        sizes.add(tuple(image.shape[1:]))
    if "lsj" in augment:
        assert sizes == {(40, 56)}
    elif "multiscale" not in augment:
        assert sizes == {(KH, KW)}
    if augment == ["copypaste"]:
        image, target = _sample()
        assert torch.equal(transforms(image, target)[1]["boxes"], target["boxes"].as_subclass(torch.Tensor))


def test_box_only_targets_keep_box_area_after_resampling():
    transforms = build_transforms(train=True, augment=["lsj", "hflip"], **SMALL)
    for seed in range(8):
        torch.manual_seed(seed)
        image, target = transforms(*_sample(masks=False))
        assert "masks" not in target
        _check_consistent(image, target, masks=False)


def test_hflip_mirrors_x_and_swaps_left_and_right_keypoints():
    image, target = _sample(keypoints=True)
    out_image, out = build_transforms(train=True, augment=["hflip"], hflip_prob=1.0, keypoint_names=KP_NAMES)(
        image, target)
    assert torch.allclose(out_image, image.flip(-1).float() / 255)
    # the flipped left eye is the original right eye, mirrored as boxes are: x' = W - x
    assert out["keypoints"].tolist() == [
        [[KW - 20.0, 8.0, 2.0], [KW - 10.0, 8.0, 2.0], [KW - 15.0, 12.0, 1.0]],
        [[KW - 50.0, 28.0, 2.0], [KW - 40.0, 28.0, 2.0], [0.0, 0.0, 0.0]],
    ]
    assert torch.equal(target["keypoints"], torch.tensor(KPOINTS))  # the input is not modified
    _check_consistent(out_image, out)
    # without names there is nothing to swap: the points are only mirrored
    _, plain = build_transforms(train=True, augment=["hflip"], hflip_prob=1.0)(*_sample(keypoints=True))
    assert plain["keypoints"][0, :, 0].tolist() == [KW - 10.0, KW - 20.0, KW - 15.0]


def test_keypoint_flip_map():
    names = ["nose", "left_eye", "right_eye", "L_Ear", "r_ear", "hip_left", "hip_right", "left_tail", "paw-l", "paw-r"]
    assert keypoint_flip_map(names) == [0, 2, 1, 4, 3, 6, 5, 7, 9, 8]
    assert keypoint_flip_map([]) == []


def test_multiscale_shorter_side_is_one_of_the_sizes():
    transforms = build_transforms(train=True, augment=["multiscale"], keypoint_names=KP_NAMES,
                                  multiscale_sizes=(24, 40, 72), multiscale_max_size=200)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = transforms(*_sample(keypoints=True))
        h, w = image.shape[1:]
        assert min(h, w) in (24, 40, 72) and abs(w / h - KW / KH) < 0.05
        seen.add(min(h, w))
        points = target["keypoints"]
        assert torch.allclose(points[0, 0, :2], torch.tensor([10.0 * w / KW, 8.0 * h / KH]))
        _check_consistent(image, target)
    assert len(seen) > 1
    # the longer side is capped: 72 on the short side would make it 96 > 80
    torch.manual_seed(0)
    capped = build_transforms(train=True, augment=["multiscale"], multiscale_sizes=(72,), multiscale_max_size=80)
    image, _ = capped(*_sample())
    assert tuple(image.shape[1:]) == (60, 80)


def test_lsj_crops_and_pads_to_the_fixed_size():
    image, target = _sample(keypoints=True)
    # scale 2: the 96x128 resized image is cropped to a random 48x64 window
    up = build_transforms(train=True, augment=["lsj"], keypoint_names=KP_NAMES, lsj_size=(KH, KW), lsj_scale=(2.0, 2.0))
    counts, hidden = set(), 0
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out = up(image, target)
        assert tuple(out_image.shape) == (3, KH, KW)
        _check_consistent(out_image, out)
        counts.add(len(out["boxes"]))
        # all surviving visible keypoints moved by the same window offset: 2 * p - (left, top)
        kept = out["labels"] - 1  # labels 1, 2 are the instance positions here
        before = torch.tensor(KPOINTS)[kept]
        visible = out["keypoints"][..., 2] > 0
        if visible.any():
            offset = (2 * before[..., :2] - out["keypoints"][..., :2])[visible][0]
            assert torch.allclose(2 * before[..., :2][visible] - offset, out["keypoints"][..., :2][visible])
            # a labelled point is hidden exactly when the window left it out
            moved = 2 * before[..., :2] - offset
            inside = (moved >= 0).all(-1) & (moved[..., 0] <= KW) & (moved[..., 1] <= KH)
            assert torch.equal(visible, inside & (before[..., 2] > 0))
            hidden += int(((before[..., 2] > 0) & ~inside).sum())
    assert hidden > 0 and min(counts) < 2  # some points and some whole instances were cropped away

    # scale 0.5: the 24x32 image is padded (right and bottom) to 40x56; masks are padded with 0
    down = build_transforms(train=True, augment=["lsj"], lsj_size=(40, 56), lsj_scale=(0.5, 0.5))
    down_image, down_target = down(image, target)
    fit = min(40 / KH, 56 / KW) * 0.5
    h, w = round(KH * fit), round(KW * fit)
    assert tuple(down_image.shape) == (3, 40, 56)
    assert (down_target["masks"][:, h:, :] == 0).all() and (down_target["masks"][:, :, w:] == 0).all()
    assert torch.allclose(down_image[:, h:, :], torch.tensor([124, 116, 104]).view(3, 1, 1) / 255)
    _check_consistent(down_image, down_target)


def test_photometric_leaves_geometry_unchanged():
    image, target = _sample(keypoints=True)
    torch.manual_seed(0)
    out_image, out = build_transforms(train=True, augment=["photometric"], keypoint_names=KP_NAMES)(image, target)
    assert not torch.allclose(out_image, image.float() / 255, atol=1e-3)
    for key in ("boxes", "masks", "labels", "area", "iscrowd", "keypoints"):
        assert torch.equal(out[key], target[key].as_subclass(torch.Tensor)), key


def test_unknown_and_conflicting_presets_are_config_errors():
    with pytest.raises(ConfigError, match="'mosaic'.*hflip, multiscale, lsj, photometric, copypaste"):
        build_transforms(train=True, augment=["hflip", "mosaic"])
    with pytest.raises(ConfigError, match="choose one"):
        build_transforms(train=True, augment=["multiscale", "lsj"])
    with pytest.raises(ConfigError, match="copypaste.*keypoint"):
        build_transforms(train=True, augment=["copypaste"], keypoint_names=KP_NAMES)


def test_dataset_output_contract_with_presets(root: Path):
    transforms = build_transforms(train=True, augment=["lsj", "hflip", "photometric"], lsj_size=(32, 32))
    ds = MaskFolderDataset(root, transforms=transforms)
    torch.manual_seed(0)
    for i in range(len(ds)):
        image, target = ds[i]
        _assert_plain(image, target)
        assert tuple(image.shape) == (3, 32, 32)
        _check_consistent(image, target)


def _write_coco(tmp_path: Path, *, keypoints: bool, segmentation: bool) -> Path:
    """A one-image COCO set: 48x64, the two KRECTS as polygons, person keypoints left_eye/right_eye/nose."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    Image.fromarray(np.zeros((KH, KW, 3), np.uint8)).save(root / "a.png")
    anns = []
    for i, (y0, y1, x0, x1) in enumerate(KRECTS):
        ann = {"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [x0, y0, x1 - x0, y1 - y0],
               "area": (x1 - x0) * (y1 - y0)}
        if segmentation:
            ann["segmentation"] = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        if keypoints:
            ann["keypoints"] = [v for point in KPOINTS[i] for v in point]
        anns.append(ann)
    category = {"id": 1, "name": "person", **({"keypoints": list(KP_NAMES)} if keypoints else {})}
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": KH, "width": KW}], "annotations": anns,
            "categories": [category]}
    path = root / "annotations" / "instances.json"
    path.write_text(json.dumps(coco))
    return path


def test_build_dataset_gives_the_keypoint_names_to_the_flip(tmp_path: Path):
    cfg = DataConfig(path=str(_write_coco(tmp_path, keypoints=True, segmentation=True)))
    image, target = build_dataset(cfg, train=True, augment=["hflip"], hflip_prob=1.0)[0]
    assert target["keypoints"][0, 0].tolist() == [KW - 20.0, 8.0, 2.0]  # left eye <- mirrored right eye
    _check_consistent(image, target)
    with pytest.raises(ConfigError, match="copypaste.*keypoint"):
        build_dataset(cfg, train=True, augment=["hflip", "copypaste"])


def test_build_dataset_refuses_copypaste_without_masks(tmp_path: Path):
    cfg = DataConfig(path=str(_write_coco(tmp_path, keypoints=False, segmentation=False)))
    with pytest.raises(ConfigError, match="copypaste.*boxes only"):
        build_dataset(cfg, train=True, augment=["copypaste"])
