"""Mask folders laid out as people have them: images/ + masks/ (or labels/, annotations/), any common suffix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.cli.main import main
from segtune.config import DataConfig
from segtune.data import open_and_check
from segtune.data.build import detect_format
from segtune.data.masks_folder import MaskFolderDataset
from tests.conftest import make_mask_folder
from tests.data.rects import RECT_A, pixels


def write_layout(root: Path, images_dir: str, masks_dir: str, suffix: str, n: int = 3) -> Path:
    (root / images_dir).mkdir(parents=True)
    (root / masks_dir).mkdir(parents=True)
    y0, y1, x0, x1 = RECT_A
    for i in range(n):
        Image.fromarray(pixels(i)).save(root / images_dir / f"cell{i}.jpg" if i % 2 else root / images_dir / f"cell{i}.png")
        mask = np.zeros(pixels(i).shape[:2], dtype=np.uint8)
        mask[y0:y1, x0:x1] = 1
        Image.fromarray(mask).save(root / masks_dir / f"cell{i}{suffix}.png")
    return root


@pytest.mark.parametrize("images_dir, masks_dir, suffix", [
    ("images", "masks", ""), ("images", "masks", "_mask"), ("images", "labels", "_label"),
    ("imgs", "annotations", "_instances"), ("JPEGImages", "SegmentationObject", ""),
])
def test_common_layouts_are_detected_paired_and_named_object(tmp_path: Path, images_dir, masks_dir, suffix) -> None:
    root = write_layout(tmp_path / "cells", images_dir, masks_dir, suffix)
    assert detect_format(root, DataConfig()) == "masks"
    ds, report = open_and_check(DataConfig(path=str(root)))
    assert isinstance(ds, MaskFolderDataset) and not report.errors and len(ds) == 3
    assert ds.mask_suffix == suffix and ds.classes == ["object"]
    assert report.instances == 3 and report.class_counts == {"object": 3}


def test_classes_flag_names_the_class_and_penn_fudan_stays_pedestrian(tmp_path: Path) -> None:
    root = write_layout(tmp_path / "cells", "images", "masks", "")
    ds, _ = open_and_check(DataConfig(path=str(root), classes=["nucleus"]))
    assert ds.classes == ["nucleus"]
    penn = make_mask_folder(tmp_path / "penn", n=3)  # PNGImages + PedMasks + _mask
    ds, _ = open_and_check(DataConfig(path=str(penn)))
    assert ds.classes == ["pedestrian"] and ds.mask_suffix == "_mask"


def test_data_check_passes_and_an_unknown_layout_names_the_folders(tmp_path: Path, capsys) -> None:
    root = write_layout(tmp_path / "cells", "images", "masks", "")
    assert main(["data", "check", str(root)]) == 0
    odd = tmp_path / "odd"
    (odd / "pictures").mkdir(parents=True)
    Image.fromarray(pixels(0)).save(odd / "pictures" / "a.png")
    assert main(["data", "check", str(odd), "--format", "masks"]) == 2
    err = capsys.readouterr().err
    assert "--images-dir" in err and "pictures" in err and "Traceback" not in err
