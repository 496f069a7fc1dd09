"""CocoDataset: polygons, RLE, crowd, non-contiguous ids, negatives, sub-folders, keypoints, problems."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pycocotools.mask as pycoco_mask  # an independent encoder for the test data
import pytest
import torch
from PIL import Image

from segtune.config import DataConfig
from segtune.data.base import ERROR, WARNING, ProblemSink
from segtune.data.build import detect_format, open_dataset
from segtune.data.coco import CocoDataset
from segtune.errors import DatasetError

H, W = 20, 30


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _polygon(y0: int, y1: int, x0: int, x1: int) -> list[float]:
    """A rectangle polygon; COCO rasterises it to rows y0..y1-1 and columns x0..x1-1 (as _rect)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return {"size": [H, W], "counts": ([0] + runs) if flat[0] else runs}


def _compressed(mask: np.ndarray) -> dict:
    rle = pycoco_mask.encode(np.asfortranarray(mask))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _save_image(path: Path, size=(H, W), seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _write(path: Path, coco: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco))
    return path


A1, A2a, A2b, A3 = _rect(2, 8, 3, 10), _rect(10, 14, 2, 6), _rect(15, 19, 20, 28), _rect(0, 5, 22, 30)
B1 = _rect(5, 12, 8, 20)


def _coco() -> dict:
    """Two annotated images (one in a sub-folder) and a negative; category ids 7 and 3, listed out of order."""
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "height": H, "width": W},
            {"id": 4, "file_name": "sub/b.png", "height": H, "width": W},
            {"id": 99, "file_name": "c.png", "height": H, "width": W},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "iscrowd": 0, "bbox": [3, 2, 7, 6], "area": 42,
             "segmentation": [_polygon(2, 8, 3, 10)], "keypoints": [4, 3, 2, 9, 7, 1], "num_keypoints": 2},
            {"id": 2, "image_id": 10, "category_id": 7, "iscrowd": 0, "bbox": [2, 10, 26, 9], "area": 48,
             "segmentation": [_polygon(10, 14, 2, 6), _polygon(15, 19, 20, 28)]},
            {"id": 3, "image_id": 10, "category_id": 3, "iscrowd": 1, "bbox": [22, 0, 8, 5], "area": 40,
             "segmentation": _uncompressed(A3)},
            {"id": 5, "image_id": 4, "category_id": 7, "iscrowd": 0, "bbox": [8, 5, 12, 7], "area": 84,
             "segmentation": _compressed(B1)},
        ],
        "categories": [
            {"id": 7, "name": "dog"},
            {"id": 3, "name": "person", "keypoints": ["nose", "tail"], "skeleton": [[1, 2]]},
        ],
    }


@pytest.fixture
def coco_set(tmp_path: Path) -> Path:
    """``annotations/instances.json`` with the images beside the annotations folder (the COCO layout)."""
    root = tmp_path / "data"
    for seed, name in enumerate(("a.png", "sub/b.png", "c.png")):
        _save_image(root / name, seed=seed)
    return _write(root / "annotations" / "instances.json", _coco())


def _box(mask: np.ndarray) -> list[float]:
    """The mask's pixel extent (segtune.data.boxes), as COCO's toBbox gives it."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# ---------------------------------------------------------------- targets


def test_reads_polygons_rle_crowd_keypoints_exactly(coco_set: Path):
    ds = CocoDataset(coco_set)
    assert ds.root == coco_set.parent.parent  # images sit beside annotations/, not in it
    assert ds.classes == ["person", "dog"] and ds.category_ids == [3, 7]
    assert ds.files == ds.all_files == ["a.png", "c.png", "sub/b.png"]
    assert [ds.image_id(i) for i in range(3)] == [10, 99, 4]
    assert ds.keypoint_names == ["nose", "tail"] and ds.skeleton == [[1, 2]]

    image, target = ds[0]
    assert image.shape == (3, H, W) and target["image_id"] == 10
    expected = np.stack([A1, A2a | A2b, A3])
    assert torch.equal(target["masks"], torch.from_numpy(expected))
    assert target["labels"].tolist() == [1, 2, 1]
    assert target["iscrowd"].tolist() == [0, 0, 1]
    assert target["boxes"].tolist() == [_box(m) for m in expected]
    assert target["area"].tolist() == [42.0, 48.0, 40.0]
    assert target["keypoints"].shape == (3, 2, 3) and target["keypoints"].dtype == torch.float32
    assert target["keypoints"][0].tolist() == [[4, 3, 2], [9, 7, 1]]
    assert not target["keypoints"][1:].any()  # annotations without keypoints: unlabelled

    _, sub = ds[2]
    assert sub["image_id"] == 4 and sub["labels"].tolist() == [2]
    assert torch.equal(sub["masks"][0], torch.from_numpy(B1))

    _, negative = ds[1]
    assert negative["image_id"] == 99 and negative["masks"].shape == (0, H, W)
    assert negative["boxes"].shape == (0, 4) and negative["keypoints"].shape == (0, 2, 3)


def test_crowd_left_out_when_training(coco_set: Path):
    _, target = CocoDataset(coco_set, keep_crowd=False)[0]
    assert target["labels"].tolist() == [1, 2] and target["iscrowd"].tolist() == [0, 0]
    assert target["keypoints"].shape == (2, 2, 3) and target["masks"].shape == (2, H, W)


def test_split_by_file_name_and_explicit_image_root(coco_set: Path, tmp_path: Path):
    ds = CocoDataset(coco_set, image_root=coco_set.parent.parent, files=["sub/b.png", "a.png"])
    assert [ds.image_id(i) for i in range(len(ds))] == [4, 10]
    assert ds.image_path(0) == coco_set.parent.parent / "sub" / "b.png"
    assert ds.get_height_and_width(0) == (H, W)


def test_images_in_the_json_folder(tmp_path: Path):
    _save_image(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}], "annotations": [],
            "categories": [{"id": 1, "name": "thing"}]}
    ds = CocoDataset(_write(tmp_path / "inst.json", coco))
    assert ds.root == tmp_path and ds.image_path(0) == tmp_path / "a.png"


def test_box_only_data_set_reads_bbox_as_xyxy(tmp_path: Path):
    _save_image(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [3.5, 2, 7, 6.25]},
                            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [20, 10, 4, 4], "segmentation": []}],
            "categories": [{"id": 5, "name": "box"}]}
    _, target = CocoDataset(_write(tmp_path / "boxes.json", coco))[0]
    assert "masks" not in target
    assert target["boxes"].tolist() == [[3.5, 2.0, 10.5, 8.25], [20.0, 10.0, 24.0, 14.0]]
    assert target["labels"].tolist() == [1, 1] and target["area"].tolist() == [7 * 6.25, 16.0]


def test_annotation_without_segmentation_in_a_mask_set_uses_its_box(tmp_path: Path, caplog):
    _save_image(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [_polygon(2, 8, 3, 10)]},
                            {"id": 8, "image_id": 1, "category_id": 1, "bbox": [20, 10, 5, 4]}],
            "categories": [{"id": 1, "name": "thing"}]}
    path = _write(tmp_path / "mixed.json", coco)
    with caplog.at_level(logging.WARNING):
        _, target = CocoDataset(path)[0]
    assert torch.equal(target["masks"], torch.from_numpy(np.stack([A1, _rect(10, 14, 20, 25)])))
    assert any(str(path) in r.getMessage() and "ids 8" in r.getMessage() for r in caplog.records)
    sink = ProblemSink(collect=True)
    CocoDataset(path, sink=sink)
    assert [(p.severity, p.kind) for p in sink.problems] == [(WARNING, "no-segmentation")]


# ---------------------------------------------------------------- detection and whole-file errors


def test_detect(coco_set: Path, tmp_path: Path):
    cfg = DataConfig()
    assert CocoDataset.detect(coco_set, cfg) and detect_format(coco_set, cfg) == "coco"
    assert CocoDataset.detect(coco_set.parent, cfg)  # the folder holding one COCO file is read through it
    (tmp_path / "no_coco").mkdir()
    assert not CocoDataset.detect(tmp_path / "no_coco", cfg)  # a folder without one is not
    labelme = _write(tmp_path / "labelme.json", {"shapes": [], "imagePath": "x.png", "note": {"images": [1]}})
    nested = _write(tmp_path / "nested.json", {"info": {"images": [], "annotations": []}})
    for path in (labelme, nested, _write(tmp_path / "list.json", [{"images": 1}])):
        assert not CocoDataset.detect(path, cfg)
    (tmp_path / "empty.json").write_text("")
    assert not CocoDataset.detect(tmp_path / "empty.json", cfg)
    tricky = tmp_path / "tricky.json"  # keys after a string holding brackets and an escaped quote
    tricky.write_text('{"info": {"d": "a \\" ] } ["}, "images": [], "annotations": []}')
    assert CocoDataset.detect(tricky, cfg)


def test_open_dataset_from_config(coco_set: Path):
    ds = open_dataset(DataConfig(path=str(coco_set)))
    assert isinstance(ds, CocoDataset) and len(ds) == 3


@pytest.mark.parametrize("text, expected", [
    ('{"images": [', "not valid JSON (line 1"),
    ('{"images": [], "categories": []}', "'annotations' missing or not a list"),
    ('[]', "'images', 'annotations', 'categories' missing"),
    ('{"images": [], "annotations": [], "categories": [{"name": "x"}]}', "categories[0] needs an integer 'id'"),
])
def test_malformed_file_names_the_file(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DatasetError) as e:
        CocoDataset(path, image_root=tmp_path)
    assert str(path) in str(e.value) and expected in str(e.value)


def test_no_image_found_names_the_folders_tried(coco_set: Path, tmp_path: Path):
    moved = _write(tmp_path / "elsewhere" / "deep" / "instances.json", _coco())
    with pytest.raises(DatasetError) as e:
        CocoDataset(moved)
    message = str(e.value)
    assert str(moved) in message and str(moved.parent) in message and str(moved.parent.parent) in message
    assert "--image-root" in message


# ---------------------------------------------------------------- problems the data doctor collects


def _problems(path: Path, **kwargs) -> tuple[CocoDataset, list]:
    sink = ProblemSink(collect=True)
    ds = CocoDataset(path, sink=sink, **kwargs)
    for i in range(len(ds)):
        ds.load(i)
    return ds, sink.problems


def test_each_problem_is_reported_with_the_file(tmp_path: Path):
    _save_image(tmp_path / "a.png")
    _save_image(tmp_path / "small.png", size=(10, 12))
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": H, "width": W},
            {"id": 2, "file_name": "a.png", "height": H, "width": W},  # duplicate file name
            {"id": 1, "file_name": "other.png", "height": H, "width": W},  # duplicate image id
            {"id": 3, "file_name": "gone.png", "height": H, "width": W},  # missing on disk
            {"id": 4, "file_name": "small.png", "height": H, "width": W},  # really 12x10
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [_polygon(2, 8, 3, 10), [1, 1, 5, 5]]},
            {"id": 2, "image_id": 77, "category_id": 1, "segmentation": [_polygon(2, 8, 3, 10)]},
            {"id": 3, "image_id": 1, "category_id": 9, "segmentation": [_polygon(2, 8, 3, 10)]},
            {"id": 4, "image_id": 4, "category_id": 1, "segmentation": [_polygon(1, 3, 1, 3)]},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = _write(tmp_path / "doctor.json", coco)
    ds, problems = _problems(path)
    kinds = {p.kind: p for p in problems}
    assert set(kinds) == {"duplicate-name", "duplicate-id", "missing-image", "dangling-id", "unknown-label",
                          "bad-polygon", "size-mismatch"}
    assert all(p.severity == ERROR and p.path == str(path) for p in problems)
    assert "'a.png'" in kinds["duplicate-name"].message and "image id 1" in kinds["duplicate-id"].message
    assert "gone.png" in kinds["missing-image"].message
    assert "annotation 2" in kinds["dangling-id"].message and "77" in kinds["dangling-id"].message
    assert "annotation 3" in kinds["unknown-label"].message and "9" in kinds["unknown-label"].message
    assert "annotation 1" in kinds["bad-polygon"].message and "polygon 1" in kinds["bad-polygon"].message
    assert "small.png" in kinds["size-mismatch"].message and "12x10" in kinds["size-mismatch"].message
    # What is left is usable: the bad polygon's annotation keeps its good part.
    assert ds.files == ["a.png", "small.png"]
    _, target = ds.load(0)
    assert target["labels"].tolist() == [1] and torch.equal(target["masks"][0], torch.from_numpy(A1))


def test_an_error_stops_training_naming_the_file(tmp_path: Path):
    _save_image(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [{"id": 6, "image_id": 1, "category_id": 2, "bbox": [1, 1, 4, 4]}],
            "categories": [{"id": 1, "name": "thing"}]}
    path = _write(tmp_path / "train.json", coco)
    with pytest.raises(DatasetError) as e:
        CocoDataset(path)
    assert str(path) in str(e.value) and "annotation 6" in str(e.value) and "category_id 2" in str(e.value)


def test_rle_problems(tmp_path: Path):
    _save_image(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "segmentation": {"size": [H, W], "counts": [5, 10]}},
                {"id": 2, "image_id": 1, "category_id": 1, "segmentation": {"size": [H, W], "counts": "!!!!"}},
                {"id": 3, "image_id": 1, "category_id": 1, "segmentation": {**_compressed(A1), "size": [H, W + 1]}},
                {"id": 4, "image_id": 1, "category_id": 1, "segmentation": _compressed(B1)},
            ],
            "categories": [{"id": 1, "name": "thing"}]}
    ds, problems = _problems(_write(tmp_path / "rle.json", coco))
    assert [(p.kind, p.message.split(":")[0]) for p in problems] == [
        ("bad-rle", "annotation 1"), ("bad-rle", "annotation 2"), ("size-mismatch", "annotation 3")]
    _, target = ds.load(0)
    assert torch.equal(target["masks"], torch.from_numpy(B1[None]))
