"""MaskFolderDataset: target format, name-based mask pairing, header-only sizes, negatives, splits, every image read."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import PIL.ImageFile
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from segtune.data.masks_folder import MaskFolderDataset
from segtune.data.transforms import build_transforms
from segtune.errors import DatasetError

H, W = 20, 30
TARGET_KEYS = {"boxes", "labels", "masks", "image_id", "area", "iscrowd"}


def _write(root: Path, name: str, rects: dict[int, tuple[int, int, int, int]], *, size=(H, W), seed: int = 0,
           images_dir: str = "PNGImages", masks_dir: str = "PedMasks", mask_name: str | None = None) -> np.ndarray:
    """Write image ``name`` and its mask; ``rects`` maps instance id -> (y0, y1, x0, x1) (python slices).

    Returns the RGB pixels written.
    """
    h, w = size
    (root / images_dir).mkdir(parents=True, exist_ok=True)
    (root / masks_dir).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    for inst, (y0, y1, x0, x1) in rects.items():
        mask[y0:y1, x0:x1] = inst
    Image.fromarray(image).save(root / images_dir / name)
    if mask_name is None:
        mask_name = Path(name).stem + "_mask.png"
    Image.fromarray(mask, mode="L").save(root / masks_dir / mask_name)
    return image


def _box(rect: tuple[int, int, int, int]) -> list[float]:
    """The XYXY box of a filled rect: its pixel extent, so x2/y2 are the python slice ends (segtune.data.boxes)."""
    y0, y1, x0, x1 = rect
    return [float(x0), float(y0), float(x1), float(y1)]


def _area(rect: tuple[int, int, int, int]) -> float:
    y0, y1, x0, x1 = rect
    return float((y1 - y0) * (x1 - x0))


RECT_A = (2, 8, 3, 10)  # rows 2..7, cols 3..9 -> box (3, 2, 10, 8), area 42
RECT_B = (10, 18, 15, 28)  # rows 10..17, cols 15..27 -> box (15, 10, 28, 18), area 104


@pytest.fixture
def known(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Three images: two instances (ids 3 and 9, not consecutive), one instance, and a negative."""
    root = tmp_path / "known"
    pixels = {
        "p0.png": _write(root, "p0.png", {3: RECT_A, 9: RECT_B}, seed=1),
        "p1.png": _write(root, "p1.png", {1: RECT_B}, seed=2),
        "p2.png": _write(root, "p2.png", {}, seed=3),
    }
    return root, pixels


# ---------------------------------------------------------------- target format


def test_target_without_transforms_has_exact_values(known):
    root, pixels = known
    ds = MaskFolderDataset(root)
    assert len(ds) == 3 and ds.files == ["p0.png", "p1.png", "p2.png"]
    image, target = ds[0]

    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, H, W)
    assert torch.equal(image.as_subclass(torch.Tensor), torch.from_numpy(pixels["p0.png"]).permute(2, 0, 1))

    assert set(target) == TARGET_KEYS
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(boxes.canvas_size) == (H, W)
    assert boxes.dtype == torch.float32 and tuple(boxes.shape) == (2, 4)
    # instances come in ascending id order: id 3 (RECT_A), then id 9 (RECT_B)
    assert boxes.as_subclass(torch.Tensor).tolist() == [_box(RECT_A), _box(RECT_B)]
    assert _box(RECT_A) == [3.0, 2.0, 10.0, 8.0]  # the convention itself, spelled out

    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 1]

    masks = target["masks"]
    assert isinstance(masks, tv_tensors.Mask)
    assert masks.dtype == torch.uint8 and tuple(masks.shape) == (2, H, W)
    expected = torch.zeros((2, H, W), dtype=torch.uint8)
    expected[0, 2:8, 3:10] = 1
    expected[1, 10:18, 15:28] = 1
    assert torch.equal(masks.as_subclass(torch.Tensor), expected)

    assert target["area"].dtype == torch.float32
    assert target["area"].tolist() == [_area(RECT_A), _area(RECT_B)] == [42.0, 104.0]
    assert target["area"].tolist() == masks.flatten(1).sum(1).float().tolist()

    assert target["iscrowd"].dtype == torch.int64 and target["iscrowd"].tolist() == [0, 0]
    assert type(target["image_id"]) is int and target["image_id"] == 0


def test_target_with_eval_transforms(known):
    root, pixels = known
    ds = MaskFolderDataset(root, transforms=build_transforms(train=False))
    image, target = ds[1]
    assert set(target) == TARGET_KEYS
    assert type(image) is torch.Tensor and image.dtype == torch.float32 and tuple(image.shape) == (3, H, W)
    expected = torch.from_numpy(pixels["p1.png"]).permute(2, 0, 1).float() / 255
    assert torch.allclose(image, expected, atol=1e-6)
    assert type(target["boxes"]) is torch.Tensor and target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [_box(RECT_B)]
    assert type(target["masks"]) is torch.Tensor and target["masks"].dtype == torch.uint8
    assert tuple(target["masks"].shape) == (1, H, W) and int(target["masks"].sum()) == 104
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1]
    assert target["area"].dtype == torch.float32 and target["area"].tolist() == [104.0]
    assert target["iscrowd"].dtype == torch.int64 and target["iscrowd"].tolist() == [0]
    assert type(target["image_id"]) is int and target["image_id"] == 1


# ---------------------------------------------------------------- pairing by name


def test_masks_are_paired_by_name_not_sort_order(tmp_path: Path):
    # Sorted images: a.png < a1.png ('.' < '1'); sorted masks: a1_mask.* < a_mask.* ('1' < '_').
    # Pairing by position in the sorted listings would swap them.
    root = tmp_path / "d"
    rect_a, rect_a1 = (1, 5, 1, 6), (9, 19, 12, 29)
    _write(root, "a.png", {1: rect_a})
    _write(root, "a1.png", {1: rect_a1}, mask_name="a1_mask.bmp")  # a mask in another image format
    (root / "PedMasks" / "notes.txt").write_text("not a mask")  # non-image files are ignored
    (root / "PNGImages" / "Thumbs.db").write_bytes(b"\0" * 10)
    assert sorted(p.name for p in (root / "PedMasks").iterdir() if p.suffix != ".txt") == ["a1_mask.bmp", "a_mask.png"]

    ds = MaskFolderDataset(root)
    assert ds.files == ["a.png", "a1.png"]
    assert ds.mask_path(0).name == "a_mask.png"
    assert ds.mask_path(1).name == "a1_mask.bmp"
    assert ds[0][1]["boxes"].tolist() == [_box(rect_a)]
    assert ds[1][1]["boxes"].tolist() == [_box(rect_a1)]


def test_image_and_mask_of_different_formats(tmp_path: Path):
    root = tmp_path / "d"
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir(parents=True)
    img = np.full((H, W, 3), 50, np.uint8)
    Image.fromarray(img).save(root / "PNGImages" / "z.bmp")
    mask = np.zeros((H, W), np.uint16)
    mask[4:9, 5:12] = 300  # a 16-bit instance id in a TIFF mask
    Image.fromarray(mask).save(root / "PedMasks" / "z_mask.tif")
    ds = MaskFolderDataset(root)
    assert ds.files == ["z.bmp"] and ds.mask_path(0).name == "z_mask.tif"
    _, target = ds[0]
    assert target["boxes"].tolist() == [_box((4, 9, 5, 12))]
    assert target["area"].tolist() == [35.0]


# ---------------------------------------------------------------- header-only sizes


def test_get_height_and_width_reads_only_the_header(tmp_path: Path, monkeypatch):
    root = tmp_path / "d"
    _write(root, "tall.png", {1: (0, 10, 0, 5)}, size=(40, 17))
    _write(root, "wide.png", {1: (0, 10, 0, 5)}, size=(13, 50))
    ds = MaskFolderDataset(root)

    def no_decode(self, *args, **kwargs):
        raise RuntimeError("pixels decoded")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decode)
    assert ds.get_height_and_width(0) == (40, 17)
    assert ds.get_height_and_width(1) == (13, 50)
    with pytest.raises(RuntimeError, match="pixels decoded"):  # the patch is really in effect
        ds[0]


# ---------------------------------------------------------------- negatives


def test_image_without_instances_gives_empty_target(known):
    root, _ = known
    for transforms in (None, build_transforms(train=False), build_transforms(train=True, hflip_prob=1.0)):
        ds = MaskFolderDataset(root, transforms=transforms)
        assert ds.files[2] == "p2.png"
        _, target = ds[2]
        assert set(target) == TARGET_KEYS
        assert tuple(target["boxes"].shape) == (0, 4) and target["boxes"].dtype == torch.float32
        assert tuple(target["labels"].shape) == (0,) and target["labels"].dtype == torch.int64
        assert tuple(target["masks"].shape) == (0, H, W) and target["masks"].dtype == torch.uint8
        assert tuple(target["area"].shape) == (0,) and target["area"].dtype == torch.float32
        assert tuple(target["iscrowd"].shape) == (0,) and target["iscrowd"].dtype == torch.int64
        assert target["image_id"] == 2


def test_maskrcnn_trains_on_a_batch_with_a_negative_image(tmp_path: Path):
    from segtune.models import build_model

    root = tmp_path / "d"
    _write(root, "neg.png", {}, size=(48, 64), seed=4)
    _write(root, "pos.png", {1: (5, 40, 6, 30), 2: (10, 30, 40, 60)}, size=(48, 64), seed=5)
    ds = MaskFolderDataset(root, transforms=build_transforms(train=False))
    images, targets = zip(*(ds[i] for i in range(len(ds))))
    assert [len(t["boxes"]) for t in targets] == [0, 2]

    torch.manual_seed(0)
    model = build_model(
        "maskrcnn_resnet50_fpn", num_classes=2, weights="none", min_size=64, max_size=96,
        rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, box_batch_size_per_image=32,
    )
    model.train()
    losses = model(list(images), [dict(t) for t in targets])
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    for name, value in losses.items():
        assert math.isfinite(float(value.detach())), name
    sum(losses.values()).backward()  # gradients flow too


# ---------------------------------------------------------------- options


def test_custom_folder_names_and_suffix(tmp_path: Path):
    root = tmp_path / "d"
    _write(root, "q.png", {5: RECT_A}, images_dir="imgs", masks_dir="ann", mask_name="q-seg.png")
    ds = MaskFolderDataset(root, images_dir="imgs", masks_dir="ann", mask_suffix="-seg")
    assert len(ds) == 1
    assert ds.image_path(0) == root / "imgs" / "q.png"
    assert ds.mask_path(0) == root / "ann" / "q-seg.png"
    assert ds[0][1]["boxes"].tolist() == [_box(RECT_A)]
    # found automatically: imgs/ is a known images folder, ann/ no known masks folder: the error names the one looked for
    with pytest.raises(DatasetError, match=re.escape(str(root / "PedMasks"))):
        MaskFolderDataset(root)
    # with the right folders but the default suffix, the image has no mask
    with pytest.raises(DatasetError, match="q.png: no mask"):
        MaskFolderDataset(root, images_dir="imgs", masks_dir="ann")


def test_empty_mask_suffix(tmp_path: Path):
    root = tmp_path / "d"
    _write(root, "s.png", {1: RECT_B}, mask_name="s.png")
    ds = MaskFolderDataset(root, mask_suffix="")
    assert ds.mask_path(0) == root / "PedMasks" / "s.png"
    assert ds[0][1]["boxes"].tolist() == [_box(RECT_B)]


def test_files_restrict_to_a_split(tmp_path: Path):
    root = tmp_path / "d"
    for i in range(5):
        _write(root, f"f{i}.png", {1: (0, 4 + i, 0, 5)}, seed=i)
    ds = MaskFolderDataset(root, files=["f3.png", "f1.png"])
    assert len(ds) == 2
    assert ds.files == ["f3.png", "f1.png"]  # the order given is kept
    assert ds.all_files == [f"f{i}.png" for i in range(5)]
    # image_id is the index in the whole folder, the same in every split
    assert [ds.image_id(0), ds.image_id(1)] == [3, 1]
    _, target = ds[0]
    assert target["image_id"] == 3 and target["boxes"].tolist() == [[0.0, 0.0, 5.0, 7.0]]
    assert MaskFolderDataset(root, files=[]).__len__() == 0

    with pytest.raises(DatasetError) as e:
        MaskFolderDataset(root, files=["f1.png", "nope.png"])
    assert str(root / "PNGImages" / "nope.png") in str(e.value)


# ---------------------------------------------------------------- every image read


def _instances(ds: MaskFolderDataset) -> int:
    return sum(len(ds[i][1]["boxes"]) for i in range(len(ds)))


def test_every_image_reads_with_its_instances(known):
    root, _ = known
    assert _instances(MaskFolderDataset(root)) == 3
    assert _instances(MaskFolderDataset(root, files=["p1.png", "p2.png"])) == 1


def test_pennfudan_layout(pennfudan: Path):
    ds = MaskFolderDataset(pennfudan)
    assert len(ds) == 170
    for i in (0, 1, 169):
        assert ds.mask_path(i).name == Path(ds.files[i]).stem + "_mask.png"
    assert ds.files[0] == "FudanPed00001.png"
    with Image.open(ds.image_path(0)) as img:
        assert ds.get_height_and_width(0) == (img.height, img.width) == (536, 559)
    image, target = ds[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 536, 559)
    # Annotation/FudanPed00001.txt gives 1-based inclusive boxes (160, 182)-(302, 431) and (420, 171)-(535, 486):
    # the pixel extent of the masks is exactly those, 0-based (x1 - 1, y1 - 1, x2, y2)
    assert target["boxes"].tolist() == [[159.0, 181.0, 302.0, 431.0], [419.0, 170.0, 535.0, 486.0]]
    assert target["labels"].tolist() == [1, 1]


@pytest.mark.slow
def test_pennfudan_has_423_instances(pennfudan: Path):
    ds = MaskFolderDataset(pennfudan)
    assert len(ds) == 170
    assert _instances(ds) == 423


def _multi_class_folder(root: Path) -> Path:
    """One RGB-coloured mask (red and green objects) and one grey mask with values 1, 2 and 3."""
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir()
    for stem in ("rgb", "grey"):
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "PNGImages" / f"{stem}.png")
    colour = np.zeros((20, 24, 3), np.uint8)
    colour[2:6, 2:8] = (255, 0, 0)
    colour[10:16, 12:20] = (0, 255, 0)
    Image.fromarray(colour).save(root / "PedMasks" / "rgb_mask.png")
    grey = np.zeros((20, 24), np.uint8)
    grey[1:4, 1:4], grey[5:9, 5:9], grey[12:18, 2:10] = 1, 2, 3
    Image.fromarray(grey, mode="L").save(root / "PedMasks" / "grey_mask.png")
    return root


def test_class_map_by_value_and_colour(tmp_path: Path):
    root = _multi_class_folder(tmp_path / "d")
    (root / "map.yaml").write_text(
        "classes: [person, bike]\nvalues: {1: person, 2: person, 3: bike, '#ff0000': person, '0,255,0': bike}\n"
    )
    ds = MaskFolderDataset(root, class_map=root / "map.yaml")
    assert ds.classes == ["person", "bike"]
    targets = {name: ds.load(i)[1] for i, name in enumerate(ds.files)}
    assert targets["grey.png"]["labels"].tolist() == [1, 1, 2]
    # Colours are packed as (r << 16) | (g << 8) | b, so green (0x00ff00) sorts before red (0xff0000).
    assert targets["rgb.png"]["labels"].tolist() == [2, 1]
    assert targets["rgb.png"]["boxes"].tolist() == [[12.0, 10.0, 20.0, 16.0], [2.0, 2.0, 8.0, 6.0]]


def test_sidecar_names_the_classes_of_one_image(tmp_path: Path):
    root = _multi_class_folder(tmp_path / "d")
    (root / "map.yaml").write_text("classes: [person, bike]\nvalues: {1: person, 2: person, 3: person}\n")
    (root / "PedMasks" / "grey_mask.json").write_text('{"3": "bike"}')  # overrides the map for this image
    ds = MaskFolderDataset(root, class_map=root / "map.yaml", files=["grey.png"])
    assert ds.load(0)[1]["labels"].tolist() == [1, 1, 2]


def test_class_map_errors_name_the_file_and_value(tmp_path: Path):
    root = _multi_class_folder(tmp_path / "d")
    (root / "map.yaml").write_text("classes: [person]\nvalues: {1: person, 2: person}\n")
    ds = MaskFolderDataset(root, class_map=root / "map.yaml", files=["grey.png"])
    with pytest.raises(DatasetError, match=re.escape(str(root / "PedMasks" / "grey_mask.png")) + ".*value 3"):
        ds.load(0)
    (root / "bad.yaml").write_text("values: {1: person}\n")
    with pytest.raises(DatasetError, match="bad.yaml: a class map needs 'classes"):
        MaskFolderDataset(root, class_map=root / "bad.yaml")
    (root / "wrong.yaml").write_text("classes: [person]\nvalues: {1: car}\n")
    with pytest.raises(DatasetError, match=r"wrong.yaml: values map to \['car'\]"):
        MaskFolderDataset(root, class_map=root / "wrong.yaml")
    with pytest.raises(DatasetError, match="missing.yaml: class map file not found"):
        MaskFolderDataset(root, class_map=root / "missing.yaml")
