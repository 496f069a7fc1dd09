"""Conversion to COCO JSON: mask folders and COCO sets read back to the same targets, pixel for pixel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segtune.cli.main import main
from segtune.config import DataConfig
from segtune.data.coco import CocoDataset
from segtune.data.convert import convert_to_coco, to_coco
from segtune.data.masks_folder import MaskFolderDataset
from segtune.errors import DatasetError
from segtune.fileio import write_json
from tests.conftest import make_mask_folder
from tests.data.test_coco import _coco, _save_image

KEYS = ("boxes", "labels", "masks", "area", "iscrowd", "image_id")


def assert_same_targets(a, b) -> None:
    """Both data sets hold the same images in the same order with identical targets."""
    assert len(a) == len(b)
    for i in range(len(a)):
        image_a, target_a = a.load(i)
        image_b, target_b = b.load(i)
        assert (image_a == image_b).all()
        assert set(target_a) == set(target_b)
        for key in target_a:
            value_a, value_b = target_a[key], target_b[key]
            if isinstance(value_a, torch.Tensor):
                assert value_a.dtype == value_b.dtype and torch.equal(value_a, value_b), (i, key)
            else:
                assert value_a == value_b, (i, key)


def test_mask_folder_round_trip(tmp_path: Path):
    data = make_mask_folder(tmp_path / "data", n=4, size=(40, 48), empty=(2,))
    out = tmp_path / "out" / "coco.json"
    summary = convert_to_coco(DataConfig(path=str(data)), out)

    source = MaskFolderDataset(data)
    n_instances = sum(len(source.load(i)[1]["labels"]) for i in range(len(source)))
    assert summary == {"images": 4, "annotations": n_instances, "categories": 1}
    coco = json.loads(out.read_text())
    assert coco["images"][0] == {"id": 0, "file_name": "../data/PNGImages/img000.png", "height": 40, "width": 48}
    assert coco["categories"] == [{"id": 1, "name": "pedestrian"}]
    ann = coco["annotations"][0]
    assert isinstance(ann["segmentation"]["counts"], str) and ann["segmentation"]["size"] == [40, 48]
    # COCO's bbox is the pixel extent, segtune's own box: the same numbers as [x, y, w, h]
    x1, y1, x2, y2 = source.load(0)[1]["boxes"][0].tolist()
    assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1] and ann["iscrowd"] == 0

    with pytest.raises(DatasetError, match="--allow-outside-root"):  # '../data/...' leaves the JSON's folder
        CocoDataset(out)
    back = CocoDataset(out, allow_outside_root=True)  # no image_root: file names are relative to the JSON's folder
    assert back.classes == ["pedestrian"] and back.category_ids == [1]
    assert_same_targets(source, back)


def test_coco_round_trip_keeps_ids_crowd_and_keypoints(tmp_path: Path):
    root = tmp_path / "data"
    for seed, name in enumerate(("a.png", "sub/b.png", "c.png")):
        _save_image(root / name, seed=seed)
    source = CocoDataset(write_json(root / "annotations" / "instances.json", _coco()))

    coco = to_coco(source)
    assert [c["id"] for c in coco["categories"]] == [3, 7]
    assert coco["categories"][0] == {"id": 3, "name": "person", "keypoints": ["nose", "tail"], "skeleton": [[1, 2]]}
    assert [(i["id"], i["file_name"]) for i in coco["images"]] == [(10, "a.png"), (99, "c.png"), (4, "sub/b.png")]
    assert [(a["image_id"], a["category_id"], a["iscrowd"]) for a in coco["annotations"]] == [
        (10, 3, 0), (10, 7, 0), (10, 3, 1), (4, 7, 0)]
    assert coco["annotations"][0]["keypoints"] == [4, 3, 2, 9, 7, 1] and coco["annotations"][0]["num_keypoints"] == 2
    assert coco["annotations"][1]["num_keypoints"] == 0

    back = CocoDataset(write_json(root / "annotations" / "copy.json", coco))
    assert back.category_ids == [3, 7] and back.classes == source.classes and back.skeleton == [[1, 2]]
    assert_same_targets(source, back)
    assert torch.equal(back.load(0)[1]["keypoints"], source.load(0)[1]["keypoints"])


def test_box_only_round_trip(tmp_path: Path):
    _save_image(tmp_path / "a.png")
    coco = {"images": [{"id": 3, "file_name": "a.png"}],
            "annotations": [{"id": 1, "image_id": 3, "category_id": 2, "bbox": [3.5, 2, 7, 6.25], "iscrowd": 1}],
            "categories": [{"id": 2, "name": "box"}]}
    source = CocoDataset(write_json(tmp_path / "boxes.json", coco))
    converted = to_coco(source)
    assert "segmentation" not in converted["annotations"][0]
    assert converted["annotations"][0]["bbox"] == [3.5, 2.0, 7.0, 6.25]
    assert_same_targets(source, CocoDataset(write_json(tmp_path / "copy.json", converted)))


def test_cli_convert(tmp_path: Path, capsys):
    data = make_mask_folder(tmp_path / "data", n=3, size=(32, 32))
    out = data / "coco.json"
    assert main(["data", "convert", str(data), "--to", "coco", str(out)]) == 0
    assert f"wrote {out}: 3 images" in capsys.readouterr().out
    coco = json.loads(out.read_text())
    assert [i["file_name"] for i in coco["images"]] == [f"PNGImages/img{i:03d}.png" for i in range(3)]
    assert len(CocoDataset(out)) == 3


def test_cli_convert_bad_source_exits_2(tmp_path: Path, capsys):
    assert main(["data", "convert", str(tmp_path / "nothing"), "--to", "coco", str(tmp_path / "o.json")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "o.json").exists()


def test_pennfudan_round_trip(pennfudan: Path, tmp_path: Path):
    files = ["FudanPed00001.png", "FudanPed00002.png", "FudanPed00003.png"]
    source = MaskFolderDataset(pennfudan, files=files)
    out = write_json(tmp_path / "pennfudan.json", to_coco(source, file_root=tmp_path))
    back = CocoDataset(out, allow_outside_root=True)  # its '../' paths lead to the shared data folder
    assert len(back) == 3 and [back.image_path(i).resolve() for i in range(3)] == [
        (pennfudan / "PNGImages" / f).resolve() for f in files]
    assert_same_targets(source, back)
