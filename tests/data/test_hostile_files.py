"""Hostile files (issue #38): an image that declares billions of pixels, an image 4 pixels high, numbers that
are no coordinates in annotation files. Each gets a clear line naming the file; nothing crashes or hangs."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.cli.main import main
from segtune.data.images import MAX_PIXELS_VARIABLE, load_rgb, read_size
from segtune.errors import DatasetError
from segtune.predict.aspect import MAX_ASPECT, cut_to_image, pad_to_aspect
from tests.detector import Detector, found, shapes_image


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A valid PNG header declaring ``width`` x ``height`` 1-bit pixels, with a few bytes of pixel data: the
    shape of a decompression bomb (decoding it would take 900 M pixels), made without decoding anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_from_its_header_with_the_limit_named(tmp_path: Path,
                                                                           monkeypatch) -> None:
    bomb = bomb_png(tmp_path / "bomb.png")
    for read in (load_rgb, read_size):
        with pytest.raises(DatasetError) as error:
            read(bomb)
        assert str(bomb) in str(error.value) and "30000 x 30000 pixels" in str(error.value)
        assert MAX_PIXELS_VARIABLE in str(error.value)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, str(30000 * 30000))  # the user allows it: the header reads
    assert read_size(bomb) == (30000, 30000)


def test_data_check_names_the_bomb_and_predict_skips_it_and_goes_on(detector: Detector, tmp_path: Path,
                                                                    capsys) -> None:
    data = tmp_path / "data"
    (data / "PNGImages").mkdir(parents=True)
    (data / "PedMasks").mkdir()
    for name in ("im01", "im02"):
        for folder, suffix in (("PNGImages", ""), ("PedMasks", "_mask")):
            (data / folder / f"{name}{suffix}.png").write_bytes(
                (detector.data / folder / f"{name}{suffix}.png").read_bytes())
    bomb = bomb_png(data / "PNGImages" / "im03.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "PedMasks" / "im03_mask.png")
    assert main(["data", "check", str(data), "--class-map", str(detector.data / "classes.yaml")]) == 1
    out = capsys.readouterr()
    assert str(bomb) in out.out + out.err and "more than segtune decodes" in out.out + out.err
    assert "Traceback" not in out.err
    preds = tmp_path / "preds"
    assert main(["predict", str(detector.run), str(data / "PNGImages"), "--out", str(preds)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {bomb}" in err and "1 of 3 inputs could not be read" in err
    results = json.loads((preds / "predictions.json").read_text())
    assert {Path(r["file_name"]).name for r in results} == {"im01.png", "im02.png"}  # the others predicted


def test_padding_keeps_the_image_and_cutting_back_drops_what_lies_in_the_padding() -> None:
    image = torch.ones(3, 4, 3000)
    padded = pad_to_aspect(image)
    assert padded.shape == (3, -(-3000 // MAX_ASPECT), 3000) and padded.shape[1] == 94
    assert torch.equal(padded[:, :4], image) and not padded[:, 4:].any()
    assert pad_to_aspect(torch.ones(3, 64, 96)).shape == (3, 64, 96)  # ordinary images as they are
    out = {"boxes": torch.tensor([[10.0, 1.0, 50.0, 30.0], [100.0, 20.0, 120.0, 60.0]]),
           "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2]), "masks": torch.ones(2, 1, 94, 3000)}
    cut = cut_to_image(out, 4, 3000)
    # The first box is clipped to the image (y 1..4); the second lies wholly in the padding (y >= 20): dropped.
    assert cut["boxes"].tolist() == [[10.0, 1.0, 50.0, 4.0]] and cut["labels"].tolist() == [1]
    assert cut["scores"].tolist() == [pytest.approx(0.9)] and cut["masks"].shape == (1, 1, 4, 3000)


def test_predict_takes_images_of_any_aspect_ratio(detector: Detector, tmp_path: Path) -> None:
    from segtune.predict import Predictor

    predictor = Predictor.from_checkpoint(detector.run, score_threshold=0.5)
    for size in ((4, 3000), (3000, 4), (1, 1)):
        path = tmp_path / f"{size[0]}x{size[1]}.png"
        Image.fromarray(np.full((*size, 3), 30, np.uint8)).save(path)
        pred = predictor(path)  # used to fail inside the model's resize: "output (H: 128, W: 0)"
        assert pred.masks is not None and pred.masks.shape[1:] == size
        assert (pred.boxes[:, 2] <= size[1]).all() and (pred.boxes[:, 3] <= size[0]).all()
    # An image of ordinary shape is not padded: the detector still finds its shapes.
    image, objects = shapes_image(tmp_path / "shapes.png", seed=3)
    pred = predictor(image)
    assert all(found(objects, list(zip(pred.names, pred.boxes.tolist())))), (objects, pred.boxes)


def _coco_with(tmp_path: Path, segmentation_text: str) -> Path:
    """A COCO file (written as text, so ``Infinity`` is JSON as Python writes it) of two 32x32 images, one
    good annotation on each, and a third annotation on the first image with ``segmentation_text``."""
    images = tmp_path / "images"
    images.mkdir()
    for k in (1, 2):
        Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8)).save(images / f"{k}.png")
    good = "[[2, 2, 20, 2, 20, 20, 2, 20]]"
    anns = [f'{{"id": {k}, "image_id": {k}, "category_id": 1, "iscrowd": 0, "segmentation": {good}, '
            f'"bbox": [2, 2, 18, 18], "area": 324}}' for k in (1, 2)]
    anns.append(f'{{"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": {segmentation_text}}}')
    path = tmp_path / "instances.json"
    path.write_text('{"images": [{"id": 1, "file_name": "images/1.png", "height": 32, "width": 32}, '
                    '{"id": 2, "file_name": "images/2.png", "height": 32, "width": 32}], '
                    f'"annotations": [{", ".join(anns)}], "categories": [{{"id": 1, "name": "thing"}}]}}')
    return path


@pytest.mark.parametrize("bad", ["Infinity", "-Infinity", "NaN", "1e30"])
def test_a_coco_polygon_with_a_number_that_is_no_coordinate_is_named_and_dropped(tmp_path: Path, capsys,
                                                                                 bad: str) -> None:
    path = _coco_with(tmp_path, f"[[1, 1, {bad}, 2, 3, 4, 5, 6]]")
    main(["data", "check", str(path)])  # used to end in MemoryError (std::bad_alloc) from the rasteriser
    out = capsys.readouterr()
    assert "annotation 3: polygon 0 has" in out.out and "not a finite pixel coordinate" in out.out, out.out
    assert "Traceback" not in out.err
    from segtune.data.coco import CocoDataset

    with pytest.raises(DatasetError, match=f"{path}: annotation 3: polygon 0 has"):
        CocoDataset(path)  # read strictly (no problem sink), as training reads after the doctor


def test_yolo_and_labelme_numbers_that_are_no_coordinates_are_named(tmp_path: Path, capsys) -> None:
    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    (yolo / "labels").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(yolo / "images" / "a.png")
    (yolo / "labels" / "a.txt").write_text("0 0.1 0.1 1e30 0.1 0.5 0.5\n0 0.5 0.5 0.2 0.2\n")
    (yolo / "data.yaml").write_text(f"path: {yolo}\ntrain: images\nnames: [thing]\n")
    main(["data", "check", str(yolo / "data.yaml")])
    out = capsys.readouterr().out
    assert "a.txt" in out and "line 1: coordinates must be finite fractions" in out, out
    labelme = tmp_path / "labelme"
    labelme.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(labelme / "a.png")
    (labelme / "a.json").write_text('{"imagePath": "a.png", "imageHeight": 32, "imageWidth": 32, "shapes": ['
                                    '{"label": "thing", "shape_type": "polygon", "points": [[1, 1], [Infinity, 2], '
                                    '[3, 9]]}, {"label": "thing", "shape_type": "rectangle", '
                                    '"points": [[2, 2], [20, 20]]}]}')
    main(["data", "check", str(labelme)])
    captured = capsys.readouterr()
    assert "a.json" in captured.out and "Traceback" not in captured.err
