"""One binary PNG per instance: the Data Science Bowl layout and the flat images/ + masks/<stem>_<k>.png one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.cli.main import main
from segtune.config import DataConfig
from segtune.data import open_and_check
from segtune.data.build import detect_format
from segtune.data.coco import CocoDataset
from segtune.data.convert import convert_to_coco
from segtune.data.instance_pngs import InstancePngDataset
from tests.data.rects import pixels

H, W = 40, 48
# Two cells that touch: they share the 2 pixels of column 20 in rows 10-11.
CELLS = [(slice(4, 12), slice(6, 21)), (slice(10, 30), slice(20, 40))]


def _mask(rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[rows, cols] = 255  # binary masks are saved 0/255 by most tools
    return m


def dsb(root: Path) -> Path:
    for i, image_id in enumerate(["a1f3", "b7c9"]):
        folder = root / image_id
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        Image.fromarray(pixels(i, (H, W))).save(folder / "images" / f"{image_id}.png")
        for k, (rows, cols) in enumerate(CELLS[: i + 1]):
            Image.fromarray(_mask(rows, cols)).save(folder / "masks" / f"{k:08x}.png")
    return root


def flat(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        Image.fromarray(pixels(i, (H, W))).save(root / "images" / f"slide{i}.png")
        for k, (rows, cols) in enumerate(CELLS[: i + 1], start=1):
            Image.fromarray(_mask(rows, cols)).save(root / "masks" / f"slide{i}_{k}.png")
    return root


@pytest.mark.parametrize("make", [dsb, flat])
def test_both_layouts_are_detected_and_give_one_instance_per_file(tmp_path: Path, make) -> None:
    root = make(tmp_path / "cells")
    assert detect_format(root, DataConfig()) == "instance-pngs"
    ds, report = open_and_check(DataConfig(path=str(root)))
    assert isinstance(ds, InstancePngDataset) and ds.classes == ["object"] and not report.errors
    assert report.images == 2 and report.instances == 3
    _, target = ds.load(1)  # the image with both cells
    assert target["masks"].shape == (2, H, W) and target["labels"].tolist() == [1, 1]
    assert target["boxes"].tolist() == [[6.0, 4.0, 21.0, 12.0], [20.0, 10.0, 40.0, 30.0]]
    # The touching cells overlap by 2 pixels: a warning naming the files, both instances kept.
    overlaps = [p for p in report.warnings if p.kind == "overlap"]
    assert len(overlaps) == 1 and "by 2 pixels" in overlaps[0].message and "kept" in overlaps[0].message


def test_check_show_and_convert_work_on_it(tmp_path: Path) -> None:
    root = dsb(tmp_path / "cells")
    assert main(["data", "check", str(root)]) == 0
    assert main(["data", "show", str(root), "--out", str(tmp_path / "grid.png")]) == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[0] > 0
    out = tmp_path / "coco.json"
    convert_to_coco(DataConfig(path=str(root), classes=["nucleus"]), out)
    back = CocoDataset(out)
    assert back.classes == ["nucleus"]
    ds = InstancePngDataset(root)
    for i in range(2):
        assert torch.equal(back.load(i)[1]["masks"], ds.load(i)[1]["masks"])


def test_a_mask_folder_with_one_id_mask_per_image_is_not_taken_for_it(tmp_path: Path) -> None:
    root = tmp_path / "m"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(pixels(0, (H, W))).save(root / "images" / "a.png")
    Image.fromarray(_mask(*CELLS[0]) // 255).save(root / "masks" / "a.png")
    assert detect_format(root, DataConfig()) == "masks"
