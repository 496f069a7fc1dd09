"""Photos with an EXIF orientation, and LabelMe files that embed their image, read as the tools show them."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from segtune.config import DataConfig
from segtune.data import open_and_check
from segtune.data.coco import CocoDataset
from segtune.data.convert import convert_to_coco
from segtune.data.images import load_rgb, read_size
from segtune.data.labelme import LabelmeDataset
from segtune.data.masks_folder import MaskFolderDataset
from segtune.errors import DatasetError
from segtune.predict.predictor import to_uint8_chw

H, W = 32, 48  # the photo as shown: wider than high
BLOCK = (4, 14, 6, 30)  # y0, y1, x0, x1 of a bright block in the shown photo
# The transposition that makes the stored pixels of a photo tagged with orientation k (its inverse is applied on load).
STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def shown() -> Image.Image:
    pixels = np.full((H, W, 3), 30, dtype=np.uint8)
    y0, y1, x0, x1 = BLOCK
    pixels[y0:y1, x0:x1] = (230, 200, 40)
    return Image.fromarray(pixels)


def tagged_jpeg(orientation: int) -> bytes:
    """A JPEG whose stored pixels are turned, with the EXIF tag that turns them back to :func:`shown`."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    shown().transpose(STORED[orientation]).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    data = buf.getvalue()
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert upright.shape == (H, W, 3)  # the test's own photo is right (PIL agrees)
    return data


def assert_block_where_annotated(image: np.ndarray, mask: torch.Tensor) -> None:
    assert image.shape[:2] == (H, W) and tuple(mask.shape) == (H, W)
    inside, outside = image[mask.numpy().astype(bool)], image[~mask.numpy().astype(bool)]
    assert inside[:, 0].mean() > 200 and outside[:, 0].mean() < 60  # the mask covers the bright block


def _rect_shape() -> dict:
    y0, y1, x0, x1 = BLOCK
    return {"label": "box", "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle", "group_id": None}


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_every_reader_and_predict_see_the_photo_as_shown(tmp_path: Path, orientation: int) -> None:
    data = tagged_jpeg(orientation)
    photo = tmp_path / "labelme" / "photo.jpg"
    photo.parent.mkdir()
    photo.write_bytes(data)
    assert read_size(photo) == (H, W) and load_rgb(photo).shape == (H, W, 3)
    assert tuple(to_uint8_chw(photo).shape) == (3, H, W)  # predict reads it the same way

    # LabelMe: imageWidth / imageHeight are the shown size, the shapes drawn on the shown photo.
    (photo.parent / "photo.json").write_text(json.dumps({
        "shapes": [_rect_shape()], "imagePath": "photo.jpg", "imageHeight": H, "imageWidth": W, "imageData": None}))
    ds, report = open_and_check(DataConfig(path=str(photo.parent)))
    assert isinstance(ds, LabelmeDataset) and not report.errors and not report.warnings
    image, target = ds.load(0)
    assert_block_where_annotated(image, target["masks"][0])
    assert ds.get_height_and_width(0) == (H, W)

    # COCO (as CVAT and Roboflow export): height and width of the shown photo.
    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    (coco / "images" / "photo.jpg").write_bytes(data)
    y0, y1, x0, x1 = BLOCK
    (coco / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "photo.jpg", "height": H, "width": W}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "area": (x1 - x0) * (y1 - y0), "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}],
        "categories": [{"id": 1, "name": "box"}]}))
    ds, report = open_and_check(DataConfig(path=str(coco / "ann.json")))
    assert isinstance(ds, CocoDataset) and not report.errors and not report.warnings
    image, target = ds.load(0)
    assert_block_where_annotated(image, target["masks"][0])

    # A mask folder: the mask PNG is drawn on the shown photo.
    masks = tmp_path / "masks"
    (masks / "PNGImages").mkdir(parents=True)
    (masks / "PedMasks").mkdir()
    (masks / "PNGImages" / "photo.jpg").write_bytes(data)
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    Image.fromarray(mask).save(masks / "PedMasks" / "photo_mask.png")
    ds, report = open_and_check(DataConfig(path=str(masks)))
    assert isinstance(ds, MaskFolderDataset) and not report.errors
    image, target = ds.load(0)
    assert_block_where_annotated(image, target["masks"][0])


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    shown().save(buf, "PNG")
    return buf.getvalue()


def test_labelme_with_the_image_embedded_and_a_path_from_another_machine(tmp_path: Path) -> None:
    folder = tmp_path / "labelme"
    folder.mkdir()
    # Older LabelMe: the image inside the JSON, imagePath as saved on someone's Windows machine.
    (folder / "a.json").write_text(json.dumps({
        "shapes": [_rect_shape()], "imagePath": "C:\\Users\\someone\\Pictures\\a.png", "imageHeight": H,
        "imageWidth": W, "imageData": base64.b64encode(_png_bytes()).decode()}))
    # A shared set: the path from another machine, the image file beside the JSON.
    shown().save(folder / "b.png")
    (folder / "b.json").write_text(json.dumps({
        "shapes": [_rect_shape()], "imagePath": "D:/labelling/b.png", "imageHeight": H, "imageWidth": W,
        "imageData": None}))
    ds, report = open_and_check(DataConfig(path=str(folder)))
    assert not report.errors and not report.warnings and len(ds) == 2
    for i in range(2):
        image, target = ds.load(i)
        assert_block_where_annotated(image, target["masks"][0])
    assert ds.embedded_image(ds.files.index("a.png")) == _png_bytes() and ds.embedded_image(ds.files.index("b.png")) is None

    # data convert writes the embedded image out as a file the COCO reader finds again.
    out = tmp_path / "coco" / "instances.json"
    convert_to_coco(DataConfig(path=str(folder)), out)
    assert (out.parent / "images" / "a.png").read_bytes() == _png_bytes()
    coco = CocoDataset(out, allow_outside_root=True)  # b.png is '../labelme/b.png' from there
    for i in range(2):
        image, target = coco.load(i)
        assert_block_where_annotated(image, target["masks"][0])


def test_labelme_without_image_or_image_data_is_named(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"shapes": [_rect_shape()], "imagePath": "gone.png", "imageData": None}))
    with pytest.raises(DatasetError, match="gone.png.*embeds no imageData"):
        LabelmeDataset(tmp_path)
