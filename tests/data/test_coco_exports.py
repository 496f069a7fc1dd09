"""COCO files as exporters write them: images/ beside the JSON, labelme2coco's background category,
Roboflow's super-category id 0, duplicate category names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from segtune.config import DataConfig
from segtune.data import open_and_check
from segtune.data.coco import CocoDataset
from segtune.errors import DatasetError
from segtune.predict import Predictor
from tests.data.rects import RECT_A, RECT_B, pixels

H, W = 32, 40


def _box(rect: tuple[int, int, int, int]) -> list[int]:
    y0, y1, x0, x1 = rect
    return [x0, y0, x1 - x0, y1 - y0]


def _poly(rect: tuple[int, int, int, int]) -> list[list[int]]:
    y0, y1, x0, x1 = rect
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_coco(root: Path, categories: list[dict], objects: list[tuple[int, tuple]], *, images_dir: str = "images",
               json_name: str = "annotations.json") -> Path:
    """One image ``a.png`` (in ``images_dir``, its file_name without the folder) with ``objects``: (category id, rect)."""
    (root / images_dir).mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels(1)).save(root / images_dir / "a.png")
    anns = [{"id": k + 1, "image_id": 1, "category_id": cat, "iscrowd": 0, "segmentation": _poly(rect),
             "bbox": _box(rect), "area": _box(rect)[2] * _box(rect)[3]} for k, (cat, rect) in enumerate(objects)]
    path = root / json_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
                                "annotations": anns, "categories": categories}))
    return path


def test_images_in_an_images_folder_beside_the_json_are_found(tmp_path: Path) -> None:
    path = write_coco(tmp_path, [{"id": 1, "name": "cat"}], [(1, RECT_A)])
    ds = CocoDataset(path)
    assert ds.root == tmp_path / "images" and len(ds) == 1 and ds.image_path(0).is_file()
    _, report = open_and_check(DataConfig(path=str(path)))
    assert not report.errors


def test_an_export_folder_holding_one_coco_file_is_read_as_coco(tmp_path: Path) -> None:
    # The folder itself, as users pass it: annotations.json beside images/, and CVAT's COCO 1.0 export
    # (annotations/instances_default.json beside images/).
    flat = tmp_path / "flat"
    write_coco(flat, [{"id": 1, "name": "cat"}], [(1, RECT_A)])
    cvat = tmp_path / "cvat"
    write_coco(cvat, [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}], [(1, RECT_A), (2, RECT_B)],
               json_name="annotations/instances_default.json")
    for folder, classes, n in ((flat, ["cat"], 1), (cvat, ["cat", "dog"], 2)):
        ds, report = open_and_check(DataConfig(path=str(folder)))
        assert ds.format == "coco" and ds.classes == classes and ds.root == folder / "images"
        assert not report.errors and ds.load(0)[1]["labels"].numel() == n


def test_a_project_file_beside_the_export_does_not_hide_the_coco_file(tmp_path: Path) -> None:
    # A tool's own project or meta JSON at the top, the instances file in annotations/.
    write_coco(tmp_path, [{"id": 1, "name": "cat"}], [(1, RECT_A)], json_name="annotations/instances_default.json")
    (tmp_path / "project.json").write_text(json.dumps({"name": "cats", "labels": ["cat"]}))
    ds, report = open_and_check(DataConfig(path=str(tmp_path)))
    assert ds.format == "coco" and ds.classes == ["cat"] and not report.errors


def test_a_folder_with_two_coco_files_is_not_guessed_at(tmp_path: Path) -> None:
    write_coco(tmp_path, [{"id": 1, "name": "cat"}], [(1, RECT_A)], json_name="annotations/train.json")
    write_coco(tmp_path, [{"id": 1, "name": "cat"}], [(1, RECT_A)], json_name="annotations/val.json")
    with pytest.raises(DatasetError, match="cannot tell the data format"):
        open_and_check(DataConfig(path=str(tmp_path)))
    with pytest.raises(DatasetError, match="holding one COCO JSON"):
        CocoDataset(tmp_path)


def test_labelme2coco_background_category_is_not_a_class(tmp_path: Path) -> None:
    # labelme2coco writes "_background_" as category 0 (and labels with it where a shape says so).
    cats = [{"supercategory": None, "id": 0, "name": "_background_"}, {"supercategory": None, "id": 1, "name": "cat"},
            {"supercategory": None, "id": 2, "name": "dog"}]
    ds = CocoDataset(write_coco(tmp_path, cats, [(1, RECT_A), (2, RECT_B), (0, RECT_B)]))
    assert ds.classes == ["cat", "dog"] and ds.category_ids == [1, 2]
    _, target = ds.load(0)
    assert target["labels"].tolist() == [1, 2]


def test_roboflow_supercategory_id_0_is_not_a_class_and_ids_map_back(tmp_path: Path) -> None:
    cats = [{"id": 0, "name": "cells", "supercategory": "none"}, {"id": 1, "name": "cell", "supercategory": "cells"},
            {"id": 2, "name": "nucleus", "supercategory": "cells"}]
    ds = CocoDataset(write_coco(tmp_path, cats, [(2, RECT_A), (1, RECT_B)]))
    assert ds.classes == ["cell", "nucleus"] and ds.category_ids == [1, 2]
    _, target = ds.load(0)
    assert target["labels"].tolist() == [2, 1]
    predictor = Predictor(nn.Identity(), ds.classes, category_ids=ds.category_ids)
    assert [predictor.category_id(label) for label in (1, 2)] == [1, 2]  # predictions.json writes the file's ids


def test_a_used_category_id_0_is_a_class_and_maps_back(tmp_path: Path) -> None:
    cats = [{"id": 0, "name": "cat"}, {"id": 5, "name": "dog"}]
    ds = CocoDataset(write_coco(tmp_path, cats, [(0, RECT_A), (5, RECT_B)]))
    assert ds.classes == ["cat", "dog"] and ds.category_ids == [0, 5]
    _, target = ds.load(0)
    assert target["labels"].tolist() == [1, 2]
    predictor = Predictor(nn.Identity(), ds.classes, category_ids=ds.category_ids)
    assert predictor.category_id(1) == 0 and predictor.category_id(2) == 5


def test_duplicate_category_names_stay_apart(tmp_path: Path) -> None:
    cats = [{"id": 1, "name": "cat"}, {"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]
    ds = CocoDataset(write_coco(tmp_path, cats, [(7, RECT_A), (1, RECT_B)]))
    assert ds.classes == ["cat (1)", "cat (7)", "dog"] and ds.category_ids == [1, 7, 9]
    _, target = ds.load(0)
    assert target["labels"].tolist() == [2, 1]
    _, report = open_and_check(DataConfig(path=str(tmp_path / "annotations.json")))
    assert any("used by several ids" in str(p) for p in report.warnings)
    assert torch.equal(target["boxes"][0], torch.tensor([3.0, 2.0, 10.0, 8.0]))
