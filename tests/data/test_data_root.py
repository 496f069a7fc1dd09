"""The data-root rule (issue #38 item 1): images are read only under the data set's own folders.

Each case is a layout a downloaded data set could have: a COCO ``file_name`` climbing out with
``../``, an absolute path, a LabelMe ``imagePath`` elsewhere, a YOLO image list naming another
folder, a symlink inside the data folder pointing out of it. Each is an error naming the annotation
file, the entry and the resolved path, and ``--allow-outside-root`` reads them with one warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from segtune.cli.main import main
from segtune.config import DataConfig
from segtune.data import ProblemSink, open_dataset
from segtune.data.coco import CocoDataset
from segtune.data.labelme import LabelmeDataset
from segtune.data.masks_folder import MaskFolderDataset
from segtune.data.yolo import YoloDataset
from segtune.errors import DatasetError
from tests.conftest import make_mask_folder
from tests.data.test_coco import _coco, _save_image, _write
from tests.data.test_labelme import _annotate, rectangle
from tests.data.test_yolo import _box_line, _image, _label

RECT = (2, 8, 3, 10)


@pytest.fixture
def private(tmp_path: Path) -> Path:
    """An image outside every data folder (what a hostile entry reaches for)."""
    path = tmp_path / "home" / "private.png"
    _save_image(path, seed=9)
    return path


def _coco_pointing_at(root: Path, entry: str) -> Path:
    """The test COCO set under ``root/annotations/instances.json`` with image 1's file_name set to ``entry``."""
    for seed, name in enumerate(("a.png", "sub/b.png", "c.png")):
        _save_image(root / name, seed=seed)
    coco = _coco()
    coco["images"][0]["file_name"] = entry
    return _write(root / "annotations" / "instances.json", coco)


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_coco_entry_outside_the_data_is_an_error_naming_file_entry_and_path(tmp_path: Path, private: Path,
                                                                            kind: str, capsys) -> None:
    entry = "../home/private.png" if kind == "relative" else str(private)
    json_path = _coco_pointing_at(tmp_path / "data", entry)

    assert main(["data", "check", str(json_path)]) == 1
    out = capsys.readouterr().out
    assert str(json_path) in out and f"file_name '{entry}'" in out and str(private.resolve()) in out
    assert "--allow-outside-root" in out and "outside the data root" in out

    # Training's sink stops at it with the same line (one line, the flag named).
    with pytest.raises(DatasetError, match="--allow-outside-root") as caught:
        open_dataset(DataConfig(path=str(json_path)), sink=ProblemSink())
    assert str(private.resolve()) in str(caught.value)

    # The doctor's collecting sink leaves it out and keeps the rest.
    ds = CocoDataset(json_path, sink=ProblemSink(collect=True))
    assert str(private) not in [str(ds.image_path(i)) for i in range(len(ds))] and len(ds) == 2


def test_allow_outside_root_reads_them_with_one_warning(tmp_path: Path, private: Path, capsys) -> None:
    json_path = _coco_pointing_at(tmp_path / "data", str(private))
    assert main(["data", "check", str(json_path), "--allow-outside-root"]) == 0
    out = capsys.readouterr().out
    assert "1 image(s) lie outside the data root" in out and "result: OK" in out
    ds = open_dataset(DataConfig(path=str(json_path), allow_outside_root=True))
    assert private in [ds.image_path(i) for i in range(len(ds))] and len(ds) == 3


def test_coco_in_an_annotations_folder_reads_images_beside_it(tmp_path: Path) -> None:
    """The COCO layout (annotations/ beside the images, '../images/x' entries) is inside its root."""
    root = tmp_path / "data"
    json_path = _coco_pointing_at(root, "a.png")
    coco = json.loads(json_path.read_text())
    for image in coco["images"]:
        _save_image(root / "images" / Path(image["file_name"]).name, seed=image["id"])
        image["file_name"] = "../images/" + Path(image["file_name"]).name
    _write(json_path, coco)
    ds = CocoDataset(json_path, image_root=root / "annotations")
    assert len(ds) == 3 and all((root / "images") in ds.image_path(i).resolve().parents for i in range(3))


def test_labelme_absolute_image_path_elsewhere(tmp_path: Path, private: Path) -> None:
    root = tmp_path / "lm"
    _annotate(root / "a.json", "a.png", [rectangle("cat", RECT)])
    _annotate(root / "b.json", None, [rectangle("cat", RECT)], image_path=str(private))
    sink = ProblemSink(collect=True)
    ds = LabelmeDataset(root, sink=sink)
    assert ds.files == ["a.png"]
    (problem,) = [p for p in sink.problems if p.kind == "outside-root"]
    assert problem.path == str(root / "b.json") and f"imagePath '{private}'" in problem.message
    assert LabelmeDataset(root, allow_outside_root=True).files == ["../home/private.png", "a.png"]


def test_symlink_inside_the_folder_pointing_out_counts_as_outside(tmp_path: Path, private: Path) -> None:
    data = make_mask_folder(tmp_path / "data", n=2)
    image = data / "PNGImages" / "img001.png"
    image.unlink()
    image.symlink_to(private)
    sink = ProblemSink(collect=True)
    assert MaskFolderDataset(data, sink=sink).files == ["img000.png"]
    assert [p.kind for p in sink.problems if p.severity == "error"] == ["outside-root"]
    assert str(private.resolve()) in sink.problems[0].message
    # A link that stays inside the folder is fine, and so is a data folder reached through a link.
    image.unlink()
    image.symlink_to(data / "PNGImages" / "img000.png")
    (tmp_path / "link").symlink_to(data)
    assert MaskFolderDataset(tmp_path / "link").files == ["img000.png", "img001.png"]


def test_yolo_image_list_naming_another_folder(tmp_path: Path, private: Path) -> None:
    root = tmp_path / "yolo"
    _image(root / "images" / "a.png")
    _label(root / "labels" / "a.txt", _box_line(0, RECT))
    (root / "train.txt").write_text(f"images/a.png\n{private}\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "train.txt", "names": ["cat"]}))
    sink = ProblemSink(collect=True)
    assert YoloDataset(root / "data.yaml", sink=sink).files == ["images/a.png"]
    (problem,) = [p for p in sink.problems if p.kind == "outside-root"]
    assert problem.path == str(root / "train.txt") and f"line 2 '{private}'" in problem.message


def test_yolo_yaml_path_elsewhere_is_the_root_it_names(tmp_path: Path) -> None:
    """Ultralytics YAMLs point ``path`` at a datasets folder of their own: that folder is the root."""
    store = tmp_path / "datasets" / "shapes"
    _image(store / "images" / "a.png")
    _label(store / "labels" / "a.txt", _box_line(0, RECT))
    config = tmp_path / "configs" / "shapes.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({"path": "../datasets/shapes", "train": "images", "names": ["cat"]}))
    assert YoloDataset(config).files == ["images/a.png"]


def test_every_image_outside_says_so_rather_than_no_images(tmp_path: Path, private: Path) -> None:
    root = tmp_path / "data"
    coco = _coco()
    coco["images"] = [{**coco["images"][0], "file_name": str(private)}]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] == coco["images"][0]["id"]]
    json_path = _write(root / "instances.json", coco)
    with pytest.raises(DatasetError, match="all 1 images lie outside the data root"):
        CocoDataset(json_path, sink=ProblemSink(collect=True))
