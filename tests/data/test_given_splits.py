"""A data set's own train/validation split is used: a YOLO YAML's train/val, Roboflow's split folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from segtune.cli.main import main
from segtune.config import DataConfig
from segtune.data import open_and_check
from segtune.data.split import choose_split
from tests.conftest import SMALL_MODEL, make_mask_folder

H, W = 48, 64


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 60, (H, W, 3), dtype=np.uint8)
    pixels[8:30, 10:40] = (220, 90, 40)
    Image.fromarray(pixels).save(path)


def _yolo_label(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("0 0.15625 0.1666 0.625 0.1666 0.625 0.625 0.15625 0.625\n")


def ultralytics_yaml(root: Path, counts: dict[str, int]) -> Path:
    """images/{train,val}/ + labels/, data.yaml with train: images/train and val: images/val."""
    k = 0
    for split, n in counts.items():
        for i in range(n):
            _image(root / "images" / split / f"{split}{i}.png", k)
            _yolo_label(root / "labels" / split / f"{split}{i}.txt")
            k += 1
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                                    "names": ["thing"]}))
    return root / "data.yaml"


def roboflow_yolo(root: Path) -> Path:
    """Roboflow's YOLO export: train/ valid/ test/ folders and a data.yaml with '../train/images' entries."""
    k = 0
    for split, n in (("train", 4), ("valid", 2), ("test", 1)):
        for i in range(n):
            _image(root / split / "images" / f"{split}{i}.jpg", k)
            _yolo_label(root / split / "labels" / f"{split}{i}.txt")
            k += 1
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
                                    "nc: 1\nnames: ['thing']\n")
    return root


def roboflow_coco(root: Path) -> Path:
    """Roboflow's COCO export: each split folder holds its images and _annotations.coco.json, category 0 the
    super-category."""
    k = 0
    for split, n in (("train", 4), ("valid", 2), ("test", 1)):
        images, anns = [], []
        for i in range(n):
            _image(root / split / f"{split}{i}.jpg", k)
            images.append({"id": i, "file_name": f"{split}{i}.jpg", "height": H, "width": W})
            anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [10, 8, 30, 22], "area": 660,
                         "segmentation": [[10, 8, 40, 8, 40, 30, 10, 30]], "iscrowd": 0})
            k += 1
        (root / split / "_annotations.coco.json").write_text(json.dumps({
            "images": images, "annotations": anns,
            "categories": [{"id": 0, "name": "things", "supercategory": "none"},
                           {"id": 1, "name": "thing", "supercategory": "things"}]}))
    return root


def test_a_yolo_yaml_train_val_split_is_used_by_training(tmp_path: Path) -> None:
    data = ultralytics_yaml(tmp_path / "yolo", {"train": 4, "val": 2})
    run = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in SMALL_MODEL.items()]
    code = main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--max-iters-per-epoch", "1",
                 "--tensorboard", "false", "--val-loss", "false", "--model", "maskrcnn_resnet50_fpn", *overrides])
    assert code == 0
    split = json.loads((run / "split.json").read_text())
    assert split["train"] == [f"images/train/train{i}.png" for i in range(4)]
    assert split["test"] == ["images/val/val0.png", "images/val/val1.png"]
    assert "the data set's own (data.yaml: train / val)" in split["source"]
    log = (run / "train.log").read_text()
    assert "split: 4 train / 2 test images: the data set's own (data.yaml: train / val)" in log
    assert "AP on so few is noise" in log  # 2 test images


def test_roboflow_yolo_export_folder_with_its_odd_paths(tmp_path: Path) -> None:
    ds, report = open_and_check(DataConfig(path=str(roboflow_yolo(tmp_path / "rf"))))
    assert ds.format == "yolo" and not report.errors and len(ds) == 7
    split = choose_split(ds, DataConfig())
    assert len(split["train"]) == 4 and split["test"] == ["valid/images/valid0.jpg", "valid/images/valid1.jpg"]
    assert split["holdout"] == ["test/images/test0.jpg"] and "test held out" in split["source"]


def test_roboflow_coco_export_folder(tmp_path: Path) -> None:
    root = roboflow_coco(tmp_path / "rf")
    assert main(["data", "check", str(root)]) == 0
    ds, report = open_and_check(DataConfig(path=str(root)))
    assert ds.format == "coco" and ds.classes == ["thing"] and ds.category_ids == [1] and len(ds) == 7
    split = choose_split(ds, DataConfig())
    assert split["train"] == [f"train/train{i}.jpg" for i in range(4)]
    assert split["test"] == ["valid/valid0.jpg", "valid/valid1.jpg"] and split["holdout"] == ["test/test0.jpg"]
    ids = [ds.image_id(i) for i in range(len(ds))]
    assert len(set(ids)) == 7  # the files' own ids (0.. in each) renumbered apart


def test_random_split_when_asked_or_when_the_data_has_none(tmp_path: Path) -> None:
    ds, _ = open_and_check(DataConfig(path=str(ultralytics_yaml(tmp_path / "yolo", {"train": 6, "val": 4}))))
    split = choose_split(ds, DataConfig(split="random", test_size=3))
    assert len(split["test"]) == 3 and split["source"] == "random, seed 0 (--split random)"
    ds, _ = open_and_check(DataConfig(path=str(make_mask_folder(tmp_path / "masks", n=5))))
    split = choose_split(ds, DataConfig())
    assert len(split["test"]) == 1 and "no split of its own" in split["source"]  # a fifth of 5


def test_a_validation_set_of_its_own_is_evaluated_and_found_again(tmp_path: Path, capsys) -> None:
    from segtune.evaluation import evaluate_checkpoint
    from segtune.predict import split_images

    train_data = make_mask_folder(tmp_path / "train", n=4, seed=1)
    val_data = make_mask_folder(tmp_path / "val", n=2, seed=2, empty=())
    test_data = make_mask_folder(tmp_path / "test", n=3, seed=3, empty=())
    run = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in SMALL_MODEL.items()]
    assert main(["train", "--data", str(train_data), "--val-data", str(val_data), "--test-data", str(test_data),
                 "--out", str(run), "--epochs", "1", "--max-iters-per-epoch", "1", "--tensorboard", "false",
                 *overrides]) == 0
    # The test set of its own is scored once, with the best checkpoint, after training.
    scored = json.loads((run / "test_metrics.json").read_text())
    assert scored["num_images"] == 3 and set(scored["metrics"]) == {"bbox", "segm"} and scored["data"] == str(test_data)
    assert f"test set {test_data} (3 images)" in (run / "train.log").read_text()
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 4 and split["test"] == ["img000.png", "img001.png"]
    assert f"--val-data {val_data}" in split["source"]
    assert json.loads((run / "run.json").read_text())["val_path"] == str(val_data)
    images = split_images(run, "test")
    assert [p.parent.parent for p in images] == [val_data, val_data]  # the validation set's own files
    assert evaluate_checkpoint(run, device="cpu").num_images == 2
    # A validation set naming other classes is refused, before anything is written.
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "masks").mkdir()
    for name in ("a.png",):
        Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(other / "images" / name)
        Image.fromarray(np.zeros((H, W), dtype=np.uint8)).save(other / "masks" / name)
    capsys.readouterr()
    assert main(["train", "--data", str(train_data), "--val-data", str(other), "--out", str(tmp_path / "r2"),
                 *overrides]) == 2
    err = capsys.readouterr().err
    assert "classes ['object'] are not the training set's ['pedestrian']" in err and not (tmp_path / "r2").exists()
