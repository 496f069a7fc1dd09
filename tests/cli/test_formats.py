"""``segtune train`` on every data format, detected or named with --format; the data doctor stops bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from segtune.cli.main import main
from segtune.predict import Predictor, split_images
from segtune.predict.writer import predict_to_folder
from tests.conftest import SMALL_MODEL

H, W = 64, 80
# Two classes; each image has one rectangle of class 0 and (on odd images) one of class 1; image 4 is empty.
RECTS = {0: (6, 8, 30, 40), 1: (40, 20, 70, 56)}  # x0, y0, x1, y1 (exclusive)


def _images(folder: Path, n: int = 5) -> list[tuple[str, list[tuple[int, tuple[int, int, int, int]]]]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        pixels = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
        objects = [] if i == 4 else [(0, RECTS[0])] + ([(1, RECTS[1])] if i % 2 else [])
        for cls, (x0, y0, x1, y1) in objects:
            pixels[y0:y1, x0:x1] = (200, 40 + 150 * cls, 40)
        name = f"img{i}.png"
        Image.fromarray(pixels).save(folder / name)
        items.append((name, objects))
    return items


def _corners(rect: tuple[int, int, int, int]) -> list[float]:
    x0, y0, x1, y1 = rect
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def make_coco(root: Path) -> Path:
    """COCO with category ids 3 and 7 (not contiguous) and file names in a sub-folder."""
    items = _images(root / "images" / "part1")
    ids = {0: 3, 1: 7}
    images, anns = [], []
    for i, (name, objects) in enumerate(items):
        images.append({"id": 100 + i, "file_name": f"images/part1/{name}", "height": H, "width": W})
        for cls, rect in objects:
            x0, y0, x1, y1 = rect
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": ids[cls], "iscrowd": 0,
                         "segmentation": [_corners(rect)], "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "area": (x1 - x0) * (y1 - y0)})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}))
    return path


def make_yolo(root: Path) -> Path:
    items = _images(root / "images")
    (root / "labels").mkdir()
    for name, objects in items:
        lines = [" ".join([str(cls)] + [f"{v / (W if k % 2 == 0 else H):.6f}" for k, v in enumerate(_corners(rect))])
                 for cls, rect in objects]
        (root / "labels" / name.replace(".png", ".txt")).write_text("\n".join(lines))
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images", "names": ["cat", "dog"]}))
    return root


def make_labelme(root: Path) -> Path:
    items = _images(root)
    names = ["cat", "dog"]
    for name, objects in items:
        shapes = [{"label": names[cls], "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle", "group_id": None}
                  for cls, (x0, y0, x1, y1) in objects]
        (root / name.replace(".png", ".json")).write_text(json.dumps(
            {"shapes": shapes, "imagePath": name, "imageHeight": H, "imageWidth": W, "imageData": None}))
    return root


def _train(data: Path, run: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--max-iters-per-epoch", "1",
                 "--test-size", "2", "--batch-size", "2", *extra, *[f"{k}={v}" for k, v in SMALL_MODEL.items()]])


@pytest.mark.parametrize("fmt, make", [("coco", make_coco), ("yolo", make_yolo), ("labelme", make_labelme)])
def test_train_detects_the_format_and_takes_its_classes(tmp_path: Path, fmt: str, make) -> None:
    data = make(tmp_path / "data")
    run = tmp_path / "run"
    assert _train(data, run) == 0
    # The classes come from the data: the run's state says so; config.yaml keeps the settings as given.
    state = json.loads((run / "run.json").read_text())
    assert state["classes"] == ["cat", "dog"] and state["data_format"] == fmt and state["data_path"] == str(data)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["path"] == str(data)
    log = (run / "train.log").read_text()
    assert f"({fmt} format): 5 images, 6 instances" in log
    history = json.loads((run / "metrics.json").read_text())
    assert set(history[0]["metrics"]) == {"bbox", "segm"}
    # Several classes: AP per class in the metrics, the CSV and the log.
    assert set(history[0]["per_class"]["segm"]) == {"cat", "dog"}
    assert "segm/AP/dog" in (run / "metrics.csv").read_text().splitlines()[0]
    assert "per-class segm AP: cat" in log
    # predict --split test finds the test images wherever this format keeps them
    test_files = json.loads((run / "split.json").read_text())["test"]
    assert main(["predict", str(run), "--split", "test", "--out", str(tmp_path / "preds"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "preds").glob("*.png")) == sorted(Path(f).stem + ".png" for f in test_files)
    # and its predictions name them: a stand-in model that detects on every image (one step of training
    # detects nothing) gives two entries per test image, each naming its file.
    predictor = Predictor.from_checkpoint(run, device="cpu")
    predictor.model = _FixedDetector()
    summary = predict_to_folder(predictor, [str(p) for p in split_images(run, "test")], tmp_path / "fixed")
    named = [Path(r["file_name"]).name for r in json.loads(summary.results_file.read_text())]
    assert sorted(named) == sorted(Path(f).name for f in test_files for _ in range(2))
    # The same data named explicitly with --format trains too.
    assert _train(data, tmp_path / "run2", "--format", fmt) == 0


class _FixedDetector(torch.nn.Module):
    """Stands in for a trained model: one detection of each label on every image."""

    def forward(self, images):
        return [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0], [40.0, 20.0, 70.0, 56.0]]),
                 "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2]),
                 "masks": torch.ones(2, 1, *img.shape[-2:])} for img in images]


def test_coco_category_ids_come_back_in_predictions(tmp_path: Path) -> None:
    data = make_coco(tmp_path / "data")
    run = tmp_path / "run"
    assert _train(data, run) == 0
    predictor = Predictor.from_checkpoint(run / "weights" / "best.pt", device="cpu")
    assert predictor.classes == ["cat", "dog"] and predictor.category_ids == [3, 7]
    predictor.model = _FixedDetector()  # a model trained for 1 iteration detects nothing above 0.05
    summary = predict_to_folder(predictor, [str(tmp_path / "data" / "images" / "part1")], tmp_path / "preds")
    results = json.loads(summary.results_file.read_text())
    assert len(results) == 10
    assert [(r["category_id"], r["category_name"]) for r in results[:2]] == [(3, "cat"), (7, "dog")]


def test_wrong_format_flag_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_coco(tmp_path / "data")
    assert _train(data, tmp_path / "run", "--format", "masks") == 2
    assert "segtune: error:" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_stops_on_the_data_doctors_errors_with_its_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_coco(tmp_path / "data")
    coco = json.loads(path.read_text())
    coco["annotations"][0]["image_id"] = 999  # points at no image
    coco["annotations"][1]["category_id"] = 5  # not a category
    path.write_text(json.dumps(coco))

    assert main(["data", "check", str(path)]) == 1
    report = capsys.readouterr().out
    assert "999" in report and "category" in report

    run = tmp_path / "run"
    assert _train(path, run) == 2
    err = capsys.readouterr().err
    problem_lines = [line.strip() for line in report.splitlines() if str(path) in line and ("999" in line)]
    assert problem_lines and all(line.split(": ", 1)[1][:60] in err for line in problem_lines)
    assert not run.exists()  # nothing written
