"""LabelmeDataset: same targets as a mask folder, shape types and groups, classes, every problem named."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.config import DataConfig
from segtune.data.base import ERROR, WARNING, ProblemSink
from segtune.data.build import detect_format, open_dataset
from segtune.data.labelme import LabelmeDataset
from segtune.data.masks_folder import MaskFolderDataset
from segtune.errors import DatasetError

from tests.data.rects import (RECT_A, RECT_B, RECT_C, H, W, assert_same_targets, pixels,
                              reference_mask_folder)



def _corners(rect: tuple[int, int, int, int]) -> list[list[float]]:
    y0, y1, x0, x1 = rect
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def polygon(label: str, rect, **extra) -> dict:
    return {"label": label, "points": _corners(rect), "shape_type": "polygon", "group_id": None, "flags": {}, **extra}


def rectangle(label: str, rect, *, reverse: bool = False, **extra) -> dict:
    y0, y1, x0, x1 = rect
    points = [[x1, y1], [x0, y0]] if reverse else [[x0, y0], [x1, y1]]
    return {"label": label, "points": points, "shape_type": "rectangle", "group_id": None, "flags": {}, **extra}


def _annotate(json_path: Path, image_name: str | None, shapes: list[dict], *, seed: int = 0,
              size: tuple[int, int] = (H, W), image_path: str | None = None, **extra) -> Path:
    """Write an image (unless ``image_name`` is None) and its LabelMe JSON, as LabelMe 5 does."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if image_name is not None:
        Image.fromarray(pixels(seed, size)).save(json_path.parent / image_name)
    data = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path or image_name,
            "imageData": None, "imageHeight": size[0], "imageWidth": size[1], **extra}
    json_path.write_text(json.dumps(data, indent=2))
    return json_path


def _labelme_set(root: Path) -> Path:
    """a.png: a cat polygon and a dog rectangle; b.png: a negative; sub/c.png: a cat rectangle."""
    _annotate(root / "a.json", "a.png", [polygon("cat", RECT_A), rectangle("dog", RECT_B)], seed=1)
    _annotate(root / "b.json", "b.png", [], seed=2)
    _annotate(root / "sub" / "c.json", "c.png", [rectangle("cat", RECT_C, reverse=True)], seed=3)
    return root



@pytest.fixture
def reference(tmp_path: Path) -> MaskFolderDataset:
    return reference_mask_folder(tmp_path / "masks")




# ---------------------------------------------------------------- targets


def test_targets_equal_the_mask_folder_reader(tmp_path: Path, reference):
    root = _labelme_set(tmp_path / "lm")
    ds = LabelmeDataset(root)
    assert ds.format == "labelme"
    assert ds.classes == ["cat", "dog"]  # no labels.txt: the sorted labels found
    assert ds.files == ds.all_files == ["a.png", "b.png", "sub/c.png"]
    assert ds.json_path(2) == root / "sub" / "c.json"
    assert_same_targets(ds, reference)

    # Corners x = 3..10 cover pixel columns 3..9 (COCO's convention: pixels whose centres are inside),
    # for polygons and rectangles alike, so the box (their pixel extent) has x2 = 10, the corner itself.
    _, target = ds[0]
    assert target["boxes"].tolist() == [[3.0, 2.0, 10.0, 8.0], [20.0, 12.0, 37.0, 30.0]]
    assert target["labels"].tolist() == [1, 2] and target["area"].tolist() == [42.0, 306.0]
    _, negative = ds[1]
    assert negative["boxes"].shape == (0, 4) and negative["masks"].shape == (0, H, W)
    _, reversed_corners = ds[2]
    assert reversed_corners["boxes"].tolist() == [[0.0, 5.0, 16.0, 21.0]]


def test_group_id_joins_shapes_into_one_instance(tmp_path: Path):
    root = tmp_path / "lm"
    _annotate(root / "g.json", "g.png", [
        rectangle("cat", RECT_A, group_id=1),
        rectangle("cat", RECT_B, group_id=1),  # same label and group: the same cat, in two parts
        rectangle("dog", RECT_C, group_id=1),  # same group, other label: its own instance
        rectangle("cat", RECT_C),  # no group: its own instance, even where it overlaps
    ])
    ds = LabelmeDataset(root)
    _, target = ds[0]
    assert target["labels"].tolist() == [1, 2, 1]
    expected = torch.zeros((3, H, W), dtype=torch.uint8)
    expected[0, 2:8, 3:10] = 1
    expected[0, 12:30, 20:37] = 1
    expected[1, 5:21, 0:16] = 1
    expected[2, 5:21, 0:16] = 1
    assert torch.equal(target["masks"].as_subclass(torch.Tensor), expected)
    assert target["boxes"].tolist()[0] == [3.0, 2.0, 37.0, 30.0]  # one box around both parts
    assert target["area"].tolist() == [42.0 + 306.0, 256.0, 256.0]


def test_circle_and_mask_shapes(tmp_path: Path):
    root = tmp_path / "lm"
    crop = np.zeros((4, 6), np.uint8)
    crop[1:3, 2:5] = 255
    buffer = io.BytesIO()
    Image.fromarray(crop, mode="L").save(buffer, format="PNG")
    _annotate(root / "s.json", "s.png", [
        {"label": "ball", "points": [[20.0, 16.0], [20.0, 21.0]], "shape_type": "circle", "group_id": None},
        {"label": "blob", "points": [[30, 2], [35, 5]], "shape_type": "mask", "group_id": None,
         "mask": base64.b64encode(buffer.getvalue()).decode()},
    ])
    _, target = LabelmeDataset(root)[0]
    ys, xs = np.mgrid[0:H, 0:W]
    circle = ((xs + 0.5 - 20) ** 2 + (ys + 0.5 - 16) ** 2 <= 25).astype(np.uint8)  # radius 5, pixel centres
    np.testing.assert_array_equal(target["masks"][0].numpy(), circle)
    assert target["boxes"].tolist()[0] == [15.0, 11.0, 25.0, 21.0]
    blob = np.zeros((H, W), np.uint8)
    blob[3:5, 32:35] = 1  # the crop's foreground, placed with its top-left pixel at (30, 2)
    np.testing.assert_array_equal(target["masks"][1].numpy(), blob)
    assert target["labels"].tolist() == [1, 2]


def test_classes_from_labels_txt(tmp_path: Path):
    root = _labelme_set(tmp_path / "lm")
    (root / "labels.txt").write_text("__ignore__\n_background_\ndog\ncat\nbird\n")
    ds = LabelmeDataset(root)
    assert ds.classes == ["dog", "cat", "bird"]  # the file's order, LabelMe's reserved names skipped
    _, target = ds[0]
    assert target["labels"].tolist() == [2, 1]
    assert LabelmeDataset(root, classes=["cat", "dog"]).classes == ["cat", "dog"]  # given classes win

    (root / "labels.txt").unlink()
    (root / "classes.txt").write_text("dog\ncat\n")
    assert LabelmeDataset(root).classes == ["dog", "cat"]


def test_windows_image_path_and_images_in_another_folder(tmp_path: Path):
    root = tmp_path / "lm"
    (root / "pictures").mkdir(parents=True)
    Image.fromarray(pixels(5)).save(root / "pictures" / "w.png")
    _annotate(root / "json" / "w.json", None, [rectangle("cat", RECT_A)], image_path="..\\pictures\\w.png")
    ds = LabelmeDataset(root)
    assert ds.files == ["pictures/w.png"] and ds.image_path(0) == root / "pictures" / "w.png"
    assert ds[0][1]["boxes"].tolist() == [[3.0, 2.0, 10.0, 8.0]]


# ---------------------------------------------------------------- problems


def test_every_problem_kind_is_named_with_its_file(tmp_path: Path):
    root = _labelme_set(tmp_path / "lm")
    (root / "labels.txt").write_text("cat\ndog\n")
    bad = _annotate(root / "a.json", "a.png", [
        polygon("cat", RECT_A),  # shape 1: fine
        {"label": "cat", "points": [[1, 1], [5, 5]], "shape_type": "polygon"},  # shape 2: two points
        rectangle("horse", RECT_B),  # shape 3: not in labels.txt
        {"label": "dog", "points": [[1, 1], [9, 9]], "shape_type": "line"},  # shape 4: no area
        {"label": "dog", "points": [[1, "x"]], "shape_type": "polygon"},  # shape 5: bad point
    ], seed=1)
    missing = _annotate(root / "gone.json", None, [rectangle("cat", RECT_A)], image_path="gone.png")
    duplicate = _annotate(root / "sub" / "copy.json", None, [], image_path="c.png")
    broken = root / "sub" / "broken.json"
    broken.write_text('{\n  "shapes": [\n    {"label": "cat",,}\n  ]\n}\n')  # the 2nd comma: line 3, column 21
    resized = _annotate(root / "b.json", "b.png", [], seed=2, size=(H, W + 8))
    Image.fromarray(pixels(2)).save(root / "b.png")  # the image is 40 wide; the JSON says 48
    (root / "config.json").write_text('{"not": "labelme"}')  # other JSON files are not ours

    sink = ProblemSink(collect=True)
    ds = LabelmeDataset(root, sink=sink)
    [ds[i] for i in range(len(ds))]  # the size check needs the decoded image
    found = [(p.severity, p.kind, p.path, p.message) for p in sink.problems]
    assert {(s, k) for s, k, _, _ in found} == {
        (ERROR, "bad-polygon"), (ERROR, "unknown-label"), (WARNING, "unsupported-shape"), (ERROR, "bad-label-file"),
        (ERROR, "missing-image"), (ERROR, "duplicate-name"), (ERROR, "size-mismatch")}

    def one(kind: str) -> tuple[str, str]:
        hits = [(path, msg) for _, k, path, msg in found if k == kind]
        assert len(hits) == 1, (kind, found)
        return hits[0]

    assert one("bad-polygon") == (str(bad), "shape 2: a polygon of 2 point(s); at least 3 are needed; left out")
    assert one("unknown-label") == (str(bad), f"shape 3: label 'horse' is not in the class file {root / 'labels.txt'} "
                                              "(cat, dog); left out")
    assert one("unsupported-shape") == (str(bad), "shape(s) 4 (line) have no area, so no mask; skipped")
    path, msg = one("missing-image")
    assert path == str(missing) and f"imagePath 'gone.png' points to {root / 'gone.png'}, which does not exist" in msg
    path, msg = one("duplicate-name")
    assert path == str(duplicate) and msg == f"annotates sub/c.png, which {root / 'sub' / 'c.json'} annotates too; " \
                                             "this file is ignored"
    path, msg = one("size-mismatch")
    assert path == str(resized) and "say 48x32" in msg and "is 40x32" in msg
    bad_files = sorted((path, msg) for _, k, path, msg in found if k == "bad-label-file")
    assert bad_files == [(str(bad), "shape 5: points must be [x, y] number pairs"),
                         (str(broken), "line 3, column 21: not valid JSON (Expecting property name enclosed in "
                                       "double quotes)")]

    assert ds.all_files == ["a.png", "b.png", "sub/c.png"]
    _, target = ds[0]  # only shape 1 is left
    assert target["labels"].tolist() == [1] and target["boxes"].tolist() == [[3.0, 2.0, 10.0, 8.0]]


def test_errors_stop_training(tmp_path: Path):
    root = _labelme_set(tmp_path / "lm")
    _annotate(root / "b.json", "b.png", [], seed=2, size=(H + 1, W))
    Image.fromarray(pixels(2)).save(root / "b.png")
    ds = LabelmeDataset(root)  # opens: the size is only known once the image is read
    with pytest.raises(DatasetError) as e:
        ds[1]
    assert str(e.value).startswith(f"{root / 'b.json'}: imageWidth x imageHeight say 40x33 but the image")

    _annotate(root / "a.json", "a.png", [{"label": "cat", "points": [[1, 1]], "shape_type": "circle"}], seed=1)
    with pytest.raises(DatasetError, match=r"a\.json: shape 1: a circle of 1 point\(s\)"):
        LabelmeDataset(root)


def test_folder_without_labelme_json(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.json").write_text('{"a": 1}')
    with pytest.raises(DatasetError, match="no LabelMe JSON files"):
        LabelmeDataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        LabelmeDataset(tmp_path / "nowhere")


# ---------------------------------------------------------------- detection and build


def test_detect_format_and_open_dataset(tmp_path: Path, reference):
    root = _labelme_set(tmp_path / "lm")
    cfg = DataConfig()
    assert detect_format(root, cfg) == "labelme"
    ds = open_dataset(DataConfig(path=str(root), format="auto"))
    assert isinstance(ds, LabelmeDataset)
    assert_same_targets(ds, reference)

    assert not LabelmeDataset.detect(tmp_path / "masks", cfg)  # a mask folder
    assert not LabelmeDataset.detect(root / "a.json", cfg)  # a file, not a folder
    yolo_like = tmp_path / "yolo_like"
    (yolo_like / "images").mkdir(parents=True)
    (yolo_like / "labels").mkdir()
    _annotate(yolo_like / "images" / "y.json", "y.png", [])
    assert not LabelmeDataset.detect(yolo_like, cfg)
    assert LabelmeDataset.from_config(cfg, root) == {}
