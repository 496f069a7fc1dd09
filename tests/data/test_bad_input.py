"""Bad data on disk gives a DatasetError naming the file; odd image modes load as uint8 RGB."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.data.coco import CocoDataset
from segtune.data.images import load_instance_mask, load_rgb, read_size
from segtune.data.masks_folder import MaskFolderDataset
from segtune.errors import DatasetError

H, W = 16, 24


def _layout(root: Path) -> tuple[Path, Path]:
    images, masks = root / "PNGImages", root / "PedMasks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    return images, masks


def _save_image(path: Path, size=(H, W), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)


def _save_mask(path: Path, size=(H, W), rect=(2, 10, 3, 15), inst: int = 1) -> None:
    mask = np.zeros(size, np.uint8)
    y0, y1, x0, x1 = rect
    mask[y0:y1, x0:x1] = inst
    Image.fromarray(mask, mode="L").save(path)


def _pair(root: Path, stem: str, size=(H, W), seed: int = 0) -> tuple[Path, Path]:
    images, masks = _layout(root)
    _save_image(images / f"{stem}.png", size, seed)
    _save_mask(masks / f"{stem}_mask.png", size)
    return images / f"{stem}.png", masks / f"{stem}_mask.png"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- missing folders and files


def test_data_path_does_not_exist(tmp_path: Path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DatasetError) as e:
        MaskFolderDataset(missing)
    assert str(missing) in str(e.value) and "does not exist" in str(e.value)


def test_images_folder_missing(tmp_path: Path):
    root = tmp_path / "d"
    (root / "PedMasks").mkdir(parents=True)
    (root / "pictures").mkdir()
    with pytest.raises(DatasetError) as e:
        MaskFolderDataset(root)
    msg = str(e.value)
    assert str(root / "PNGImages") in msg and "images folder not found" in msg
    assert "--images-dir" in msg and "pictures" in msg.split("holds:")[1]  # lists what the folder holds
    (root / "images").mkdir()  # a known images folder, but empty: named as such
    with pytest.raises(DatasetError, match=f"{root / 'images'}: no images found"):
        MaskFolderDataset(root)


def test_masks_folder_missing(tmp_path: Path):
    root = tmp_path / "d"
    (root / "PNGImages").mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        MaskFolderDataset(root)
    assert str(root / "PedMasks") in str(e.value) and "masks folder not found" in str(e.value)


def test_no_images(tmp_path: Path):
    root = tmp_path / "d"
    images, _ = _layout(root)
    (images / "readme.txt").write_text("nothing here")
    with pytest.raises(DatasetError) as e:
        MaskFolderDataset(root)
    assert str(images) in str(e.value) and "no images" in str(e.value)


def test_image_without_its_mask(tmp_path: Path):
    root = tmp_path / "d"
    _pair(root, "ok")
    images, masks = _layout(root)
    _save_image(images / "lonely.png")
    _save_image(images / "lonely2.png")
    with pytest.raises(DatasetError) as e:
        MaskFolderDataset(root)
    msg = str(e.value)
    assert str(images / "lonely.png") in msg and "no mask" in msg
    assert str(masks / "lonely_mask") in msg  # says where it looked
    assert "1 more images lack masks" in msg


def test_mask_without_its_image(tmp_path: Path):
    root = tmp_path / "d"
    _pair(root, "ok")
    images, masks = _layout(root)
    _save_mask(masks / "ghost_mask.png")
    with pytest.raises(DatasetError) as e:
        MaskFolderDataset(root)
    msg = str(e.value)
    assert str(masks / "ghost_mask.png") in msg and "mask has no image" in msg
    assert f"{images}/ghost.*" in msg


def test_mask_size_differs_from_image(tmp_path: Path):
    root = tmp_path / "d"
    images, masks = _layout(root)
    _save_image(images / "s.png", size=(H, W))
    _save_mask(masks / "s_mask.png", size=(H, W + 1))
    ds = MaskFolderDataset(root)  # found at load time, not when listing
    for action in (lambda: ds[0], lambda: [ds[i] for i in range(len(ds))]):
        with pytest.raises(DatasetError) as e:
            action()
        msg = str(e.value)
        assert str(masks / "s_mask.png") in msg and "s.png" in msg
        assert f"{W + 1}x{H}" in msg and f"{W}x{H}" in msg


# ---------------------------------------------------------------- unreadable files


def test_truncated_image(tmp_path: Path):
    root = tmp_path / "d"
    image, _ = _pair(root, "t", size=(64, 64))
    _pair(root, "u", size=(64, 64), seed=1)
    _truncate(image)
    ds = MaskFolderDataset(root)
    assert ds.get_height_and_width(0) == (64, 64)  # the header survived the cut
    ds[1]  # the other image is fine
    with pytest.raises(DatasetError) as e:
        ds[0]
    assert str(image) in str(e.value) and "truncated" in str(e.value)
    with pytest.raises(DatasetError, match="truncated"):
        load_rgb(image)


def test_truncated_mask(tmp_path: Path):
    root = tmp_path / "d"
    images, masks = _layout(root)
    _save_image(images / "m.png", size=(64, 64))
    rng = np.random.default_rng(0)  # noisy ids so the PNG is big enough to cut inside the pixel data
    Image.fromarray(rng.integers(0, 256, size=(64, 64), dtype=np.uint8), mode="L").save(masks / "m_mask.png")
    _truncate(masks / "m_mask.png")
    ds = MaskFolderDataset(root)
    with pytest.raises(DatasetError) as e:
        ds[0]
    assert str(masks / "m_mask.png") in str(e.value)
    with pytest.raises(DatasetError):
        load_instance_mask(masks / "m_mask.png")


def test_non_image_file_with_png_extension(tmp_path: Path):
    root = tmp_path / "d"
    image, _ = _pair(root, "fake")
    image.write_text("this is not a PNG\n")
    ds = MaskFolderDataset(root)
    for action in (lambda: ds[0], lambda: ds.get_height_and_width(0), lambda: load_rgb(image),
                   lambda: read_size(image)):
        with pytest.raises(DatasetError) as e:
            action()
        assert str(image) in str(e.value) and "not a readable image" in str(e.value)


def test_load_of_missing_file(tmp_path: Path):
    with pytest.raises(DatasetError, match="file not found") as e:
        load_rgb(tmp_path / "gone.png")
    assert str(tmp_path / "gone.png") in str(e.value)


# ---------------------------------------------------------------- image modes


def _mode_images(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Write one H x W image per mode; return {mode: (path, expected uint8 RGB)}."""
    out: dict[str, tuple[Path, np.ndarray]] = {}
    rng = np.random.default_rng(7)

    gray = rng.integers(0, 256, size=(H, W), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(folder / "gray.png")
    out["L"] = (folder / "gray.png", np.repeat(gray[:, :, None], 3, axis=2))

    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [10, 20, 250]], np.uint8)
    idx = rng.integers(0, 4, size=(H, W), dtype=np.uint8)
    p = Image.fromarray(idx, mode="P")
    p.putpalette(palette.flatten().tolist())
    p.save(folder / "palette.png")
    out["P"] = (folder / "palette.png", palette[idx])

    rgba = rng.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    out["RGBA"] = (folder / "rgba.png", rgba[:, :, :3])  # PIL drops alpha

    la = rng.integers(0, 256, size=(H, W, 2), dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(folder / "la.png")
    out["LA"] = (folder / "la.png", np.repeat(la[:, :, :1], 3, axis=2))

    wide = np.zeros((H, W), np.uint16)
    wide[0, 0], wide[0, 1], wide[0, 2], wide[0, 3] = 65535, 32768, 1000, 257
    Image.fromarray(wide).save(folder / "wide16.png")
    expected16 = np.round(wide.astype(np.float64) / 65535 * 255).astype(np.uint8)
    out["I;16"] = (folder / "wide16.png", np.repeat(expected16[:, :, None], 3, axis=2))
    return out


def test_modes_are_what_was_written(tmp_path: Path):
    for mode, (path, _) in _mode_images(tmp_path).items():
        with Image.open(path) as img:
            assert img.mode == mode, path


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16"])
def test_load_rgb_any_mode(tmp_path: Path, mode: str):
    path, expected = _mode_images(tmp_path)[mode]
    arr = load_rgb(path)
    assert arr.dtype == np.uint8 and arr.shape == (H, W, 3)
    np.testing.assert_array_equal(arr, expected)


def test_16_bit_is_scaled_not_clipped(tmp_path: Path):
    path, _ = _mode_images(tmp_path)["I;16"]
    arr = load_rgb(path)
    assert arr[0, 0].tolist() == [255, 255, 255]  # 65535
    assert abs(int(arr[0, 1, 0]) - 128) <= 1  # 32768 is half way, not clipped to 255
    assert arr[0, 2, 0] == 4  # 1000 / 65535 * 255 = 3.9 (clipping would give 255)
    assert arr[0, 3, 0] == 1  # 257 -> 1
    assert arr[1, 0, 0] == 0


def test_all_modes_through_the_dataset(tmp_path: Path):
    root = tmp_path / "d"
    images, masks = _layout(root)
    modes = _mode_images(images)
    for path, _ in modes.values():
        _save_mask(masks / f"{path.stem}_mask.png")
    ds = MaskFolderDataset(root)
    assert len(ds) == len(modes)
    by_name = {path.name: expected for path, expected in modes.values()}
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, H, W)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), by_name[ds.files[i]])
        assert target["boxes"].tolist() == [[3.0, 2.0, 15.0, 10.0]]
    assert sum(len(ds[i][1]["boxes"]) for i in range(len(ds))) == len(modes)


# ---------------------------------------------------------------- degenerate instances


@pytest.fixture
def segtune_caplog(caplog, monkeypatch):
    """caplog that also sees segtune's loggers after the CLI has set ``propagate = False`` on them."""
    parent = logging.getLogger("segtune")
    monkeypatch.setattr(parent, "propagate", True)
    monkeypatch.setattr(parent, "handlers", [])
    caplog.set_level(logging.WARNING, logger="segtune.data")
    return caplog


def test_one_pixel_wide_and_high_instances_are_kept_with_their_pixel_extent(tmp_path: Path, segtune_caplog):
    root = tmp_path / "d"
    images, masks = _layout(root)
    _save_image(images / "thin.png")
    mask = np.zeros((H, W), np.uint8)
    mask[1:7, 2:9] = 1  # box (2, 1, 9, 7)
    mask[2:12, 20] = 2  # a one-pixel-wide column: box (20, 2, 21, 12), width 1
    mask[14, 5:20] = 3  # a one-pixel-high row: box (5, 14, 20, 15), height 1
    mask[12, 1] = 4  # a single pixel: box (1, 12, 2, 13)
    Image.fromarray(mask, mode="L").save(masks / "thin_mask.png")

    ds = MaskFolderDataset(root)
    _, target = ds[0]
    assert target["boxes"].tolist() == [[2.0, 1.0, 9.0, 7.0], [20.0, 2.0, 21.0, 12.0], [5.0, 14.0, 20.0, 15.0],
                                        [1.0, 12.0, 2.0, 13.0]]
    assert target["area"].tolist() == [42.0, 10.0, 15.0, 1.0]
    assert target["labels"].tolist() == [1, 1, 1, 1] and tuple(target["masks"].shape) == (4, H, W)
    assert sum(len(ds[i][1]["boxes"]) for i in range(len(ds))) == 4
    assert not [r for r in segtune_caplog.records if r.name.startswith("segtune.data")]  # nothing to warn about


def _box_only_coco(tmp_path: Path) -> Path:
    """A box-only COCO file: one image with a real box, a zero-width box and a box outside the image."""
    _save_image(tmp_path / "a.png")
    anns = [[2, 1, 6, 5], [10, 3, 0, 4], [W + 5, 2, 3, 3]]
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                            for k, b in enumerate(anns)],
            "categories": [{"id": 1, "name": "thing"}]}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco))
    return path


def test_degenerate_boxes_are_left_out_of_training_and_kept_for_evaluation(tmp_path: Path, segtune_caplog):
    path = _box_only_coco(tmp_path)
    _, target = CocoDataset(path, keep_crowd=False)[0]  # training
    assert target["boxes"].tolist() == [[2.0, 1.0, 8.0, 6.0]]
    messages = [r.getMessage() for r in segtune_caplog.records if r.name.startswith("segtune.data")]
    assert len(messages) == 1 and str(path) in messages[0] and "[2, 3]" in messages[0] and "dropped" in messages[0]

    evaluation = CocoDataset(path, keep_crowd=True)
    _, annotated = evaluation.load(0)  # as written, for the ground truth: nothing dropped, nothing clamped
    assert annotated["boxes"].tolist() == [[2.0, 1.0, 8.0, 6.0], [10.0, 3.0, 10.0, 7.0], [W + 5, 2.0, W + 8, 5.0]]
    assert annotated["area"].tolist() == [30.0, 0.0, 9.0]
    _, model_side = evaluation[0]  # what a model sees is inside the image
    assert model_side["boxes"].tolist()[2] == [W, 2.0, W, 5.0]


def test_image_whose_only_instance_is_degenerate_becomes_a_negative(tmp_path: Path, segtune_caplog):
    path = _box_only_coco(tmp_path)
    coco = json.loads(path.read_text())
    coco["annotations"] = coco["annotations"][1:2]
    path.write_text(json.dumps(coco))
    _, target = CocoDataset(path, keep_crowd=False)[0]
    assert tuple(target["boxes"].shape) == (0, 4)
    assert tuple(target["area"].shape) == (0,) and tuple(target["labels"].shape) == (0,)
    assert any("boxes.json" in r.getMessage() for r in segtune_caplog.records)
