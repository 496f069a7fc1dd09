"""YoloDataset: same targets as a mask folder, Ultralytics' paths and YAML, every problem named with its line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as coco_mask

from segtune.config import DataConfig
from segtune.data.base import ERROR, WARNING, ProblemSink
from segtune.data.build import detect_format, open_dataset
from segtune.data.masks_folder import MaskFolderDataset
from segtune.data.polygons import polygons_to_mask
from segtune.data.yolo import YoloDataset, label_path
from segtune.errors import DatasetError

from tests.data.rects import (CLASSES, RECT_A, RECT_B, RECT_C, H, W, assert_same_targets,
                              reference_mask_folder)



def _polygon_line(cls: int, rect: tuple[int, int, int, int]) -> str:
    """A YOLO polygon line for a rectangle: the corners in pixels, normalised."""
    y0, y1, x0, x1 = rect
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return f"{cls} " + " ".join(f"{x / W:.6f} {y / H:.6f}" for x, y in corners)


def _box_line(cls: int, rect: tuple[int, int, int, int]) -> str:
    """A YOLO detection line ``cls cx cy w h`` for a rectangle."""
    y0, y1, x0, x1 = rect
    return f"{cls} {(x0 + x1) / 2 / W:.6f} {(y0 + y1) / 2 / H:.6f} {(x1 - x0) / W:.6f} {(y1 - y0) / H:.6f}"


def _image(path: Path, seed: int = 0, size: tuple[int, int] = (H, W)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _label(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _yolo_set(root: Path, *, names: object = CLASSES) -> Path:
    """a.png: a cat polygon and a dog polygon; b.png: a negative; sub/c.png: a cat as a box line."""
    _image(root / "images" / "a.png", seed=1)
    _label(root / "labels" / "a.txt", _polygon_line(0, RECT_A), _polygon_line(1, RECT_B))
    _image(root / "images" / "b.png", seed=2)  # no label file: a negative
    _image(root / "images" / "sub" / "c.png", seed=3)
    _label(root / "labels" / "sub" / "c.txt", _box_line(0, RECT_C))
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images", "names": names}))
    return root





@pytest.fixture
def reference(tmp_path: Path) -> MaskFolderDataset:
    return reference_mask_folder(tmp_path / "masks")


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize("entry", ["yaml", "folder"])
def test_targets_equal_the_mask_folder_reader(tmp_path: Path, reference, entry: str):
    root = _yolo_set(tmp_path / "yolo")
    ds = YoloDataset(root / "data.yaml" if entry == "yaml" else root)
    assert ds.format == "yolo" and ds.classes == CLASSES
    assert ds.files == ds.all_files == ["images/a.png", "images/b.png", "images/sub/c.png"]
    assert_same_targets(ds, reference)

    # The values themselves: polygon x = 3..10 covers pixel columns 3..9 (COCO's rasteriser fills the
    # pixels whose centres are inside), so the box (their pixel extent) has x2 = 10, the polygon's own x.
    _, target = ds[0]
    assert target["boxes"].tolist() == [[3.0, 2.0, 10.0, 8.0], [20.0, 12.0, 37.0, 30.0]]
    assert target["labels"].tolist() == [1, 2]  # YOLO class 0 -> label 1
    assert target["area"].tolist() == [42.0, 306.0]
    _, negative = ds[1]
    assert negative["boxes"].shape == (0, 4) and negative["masks"].shape == (0, H, W)
    _, box_line = ds[2]  # a 'cls cx cy w h' line gives its rectangle as the mask
    assert box_line["boxes"].tolist() == [[0.0, 5.0, 16.0, 21.0]] and box_line["labels"].tolist() == [1]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools under numpy 2
def test_rasterisation_convention_is_cocos(tmp_path: Path):
    """A polygon from x=2 to x=10 covers columns 2..9; a slanted one equals pycocotools' own mask."""
    square = polygons_to_mask([[2, 3, 10, 3, 10, 8, 2, 8]], H, W)
    expected = np.zeros((H, W), np.uint8)
    expected[3:8, 2:10] = 1
    np.testing.assert_array_equal(square, expected)

    triangle = [4.37, 1.73, 35.23, 9.91, 12.61, 29.13]  # no vertex on a rounding tie of the 1/5-pixel grid
    root = tmp_path / "d"
    _image(root / "images" / "t.png")
    _label(root / "labels" / "t.txt",
           "1 " + " ".join(f"{v / (W if k % 2 == 0 else H):.8f}" for k, v in enumerate(triangle)))
    (root / "data.yaml").write_text("names: [a, b]\n")
    _, target = YoloDataset(root)[0]
    reference = coco_mask.decode(coco_mask.frPyObjects([triangle], H, W))[:, :, 0]
    np.testing.assert_array_equal(target["masks"][0].numpy(), reference)
    assert target["labels"].tolist() == [2]


def test_split_selection_keeps_image_ids(tmp_path: Path):
    root = _yolo_set(tmp_path / "yolo")
    ds = YoloDataset(root / "data.yaml", files=["images/sub/c.png", "images/a.png"])
    assert len(ds) == 2 and ds.files == ["images/sub/c.png", "images/a.png"]
    assert [ds[i][1]["image_id"] for i in range(2)] == [2, 0]
    assert ds.label_path(0) == root / "labels" / "sub" / "c.txt"
    with pytest.raises(DatasetError, match="not in the data set"):
        YoloDataset(root / "data.yaml", files=["images/zzz.png"])


# ---------------------------------------------------------------- Ultralytics layout and YAML


def test_label_path_rule():
    assert label_path(Path("d/images/a/b.jpg")) == Path("d/labels/a/b.txt")
    # Only the last 'images' folder is replaced, as in Ultralytics.
    assert label_path(Path("images/set/images/train/x.png")) == Path("images/set/labels/train/x.txt")
    assert label_path(Path("d/pics/x.v2.jpg")) == Path("d/pics/x.v2.txt")  # no images folder: next to the image
    assert label_path(Path("d/images.png")) == Path("d/images.txt")  # a file named images is not the folder


def test_ultralytics_yaml_with_splits_root_and_index_names(tmp_path: Path):
    """coco8-style: path is the root, train/val/test are folders under it, names an {index: name} mapping."""
    root = tmp_path / "sets" / "shapes"
    _image(root / "images" / "train" / "t1.jpg", seed=1)
    _label(root / "labels" / "train" / "t1.txt", _polygon_line(2, RECT_A))
    _image(root / "images" / "val" / "v1.png", seed=2)
    _label(root / "labels" / "val" / "v1.txt", _box_line(0, RECT_B))
    _image(root / "images" / "extra" / "e1.png", seed=3)
    _image(root / "images" / "test" / "x1.png", seed=4)
    (root / "lists").mkdir()
    (root / "lists" / "test.txt").write_text("../images/test/x1.png\n")
    data_yaml = tmp_path / "configs" / "shapes.yaml"
    data_yaml.parent.mkdir()
    data_yaml.write_text(
        "path: ../sets/shapes\n"
        "train: images/train\n"
        "val: [images/val, images/extra, images/val]\n"  # listed twice: read once
        "test: lists/test.txt\n"
        "names:\n  0: circle\n  1: square\n  2: star\n"
    )
    ds = YoloDataset(data_yaml)
    assert ds.root == root
    assert ds.classes == ["circle", "square", "star"]
    assert ds.all_files == ["images/extra/e1.png", "images/test/x1.png", "images/train/t1.jpg", "images/val/v1.png"]
    _, t1 = ds[ds.files.index("images/train/t1.jpg")]
    assert t1["labels"].tolist() == [3]
    _, v1 = ds[ds.files.index("images/val/v1.png")]
    assert v1["labels"].tolist() == [1] and v1["area"].tolist() == [306.0]


def test_yaml_path_that_does_not_exist_falls_back_to_the_yaml_folder(tmp_path: Path):
    root = _yolo_set(tmp_path / "yolo")
    (root / "data.yaml").write_text("path: ../datasets/yolo\ntrain: images\nnames: [cat, dog]\n")
    ds = YoloDataset(root / "data.yaml")
    assert ds.root == root and ds.files[0] == "images/a.png"


def test_yaml_errors_name_the_file_and_the_entry(tmp_path: Path):
    root = _yolo_set(tmp_path / "yolo")
    cases = {
        "train: images/train\nnames: [cat]\n": ["train 'images/train' not found", str(root / "images/train")],
        "names: [cat]\n": ["no images listed", "'train:'"],
        "train: images\nnames: {0: cat, 2: dog}\n": ["'names' indices must be 0..1", "[0, 2]"],
        "train: images\nnames: cat\n": ["'names' must list the class names"],
        "train: images\nnc: 3\nnames: [cat, dog]\n": ["'nc' is 3 but 'names' has 2 classes"],
        "train: [images\n": ["cannot read the data YAML"],
    }
    for text, expected in cases.items():
        (root / "data.yaml").write_text(text)
        with pytest.raises(DatasetError) as e:
            YoloDataset(root / "data.yaml")
        assert str(e.value).startswith(f"{root / 'data.yaml'}: "), text
        for part in expected:
            assert part in str(e.value), (text, str(e.value))


def test_folder_without_class_names_says_what_was_looked_for(tmp_path: Path):
    root = _yolo_set(tmp_path / "yolo")
    (root / "data.yaml").unlink()
    (root / "notes.yaml").write_text("author: me\n")  # a YAML without names is not a class list
    with pytest.raises(DatasetError) as e:
        YoloDataset(root)
    msg = str(e.value)
    assert msg.startswith(f"{root}: no class names found")
    assert "data.yaml" in msg and "dataset.yaml" in msg and "*.yaml with 'names'" in msg and "classes.txt" in msg

    (root / "classes.txt").write_text("cat\ndog\n")  # Label Studio / LabelImg exports name classes here
    assert YoloDataset(root).classes == CLASSES
    (root / "custom.yml").write_text("names: [kitten, puppy]\n")
    assert YoloDataset(root).classes == ["kitten", "puppy"]
    (root / "dataset.yaml").write_text("names: [x, y]\n")
    assert YoloDataset(root).classes == ["x", "y"]


# ---------------------------------------------------------------- problems


def _problems(ds_or_sink) -> list[tuple[str, str, str, str]]:
    sink = ds_or_sink.sink if hasattr(ds_or_sink, "sink") else ds_or_sink
    return [(p.severity, p.kind, p.path, p.message) for p in sink.problems]


def test_every_problem_kind_is_named_with_file_and_line(tmp_path: Path):
    root = _yolo_set(tmp_path / "yolo")
    labels = root / "labels"
    bad = _label(labels / "a.txt",
                 _polygon_line(0, RECT_A),  # line 1: fine
                 "1 0.1 0.1",  # line 2: a one-point polygon (two points would be read as 'cx cy w h')
                 "7 " + _polygon_line(0, RECT_B)[2:],  # line 3: class 7 of 2
                 "",  # line 4: blank lines are allowed
                 "0 0.1 0.1 0.2 0.2 0.3",  # line 5: odd coordinate count
                 "0 0.1 oops 0.2 0.2 0.3 0.3",  # line 6: not a number
                 _polygon_line(0, RECT_A),  # line 7: repeats line 1
                 "1 -0.2 0.0 0.5 0.0 0.5 0.5 -0.2 0.5",  # line 8: outside the image, clamped to x = 0
                 "0.5 0.1 0.1 0.5 0.1 0.5 0.5")  # line 9: class 0.5
    orphan = _label(labels / "sub" / "gone.txt", _polygon_line(0, RECT_A))
    (labels / "classes.txt").write_text("cat\ndog\n")  # not an orphan label: a class list
    _image(root / "images" / "b.jpg", seed=9)  # b.png and b.jpg share labels/b.txt
    undecodable = labels / "sub" / "c.txt"
    undecodable.write_bytes(b"0 0.1 0.1 \xff\xfe 0.2\n")

    sink = ProblemSink(collect=True)
    ds = YoloDataset(root / "data.yaml", sink=sink)
    found = _problems(sink)
    kinds = {(severity, kind) for severity, kind, _, _ in found}
    assert kinds == {(ERROR, "bad-polygon"), (ERROR, "unknown-label"), (ERROR, "bad-label-file"),
                     (WARNING, "missing-image"), (ERROR, "duplicate-name"), (WARNING, "duplicate-instance"),
                     (WARNING, "out-of-range")}

    def one(kind: str, needle: str) -> tuple[str, str]:
        hits = [(path, msg) for _, k, path, msg in found if k == kind and needle in msg]
        assert len(hits) == 1, (kind, needle, found)
        return hits[0]

    assert one("bad-polygon", "line 2:") == (str(bad), "line 2: a polygon of 1 point(s); at least 3 are needed; "
                                                       "instance left out")
    path, msg = one("unknown-label", "line 3:")
    assert path == str(bad) and "class 7 is not in the 2 class names" in msg and str(root / "data.yaml") in msg
    assert one("bad-label-file", "line 5:")[0] == str(bad)
    assert "odd number" in one("bad-label-file", "line 5:")[1]
    assert "'oops' is not a number" in one("bad-label-file", "line 6:")[1]
    assert "'0.5' is not a whole number" in one("bad-label-file", "line 9:")[1]
    assert one("duplicate-instance", "line(s) 7 (= line 1)")[0] == str(bad)
    assert one("out-of-range", "line(s) 8:")[0] == str(bad)
    assert one("bad-label-file", "UTF-8")[0] == str(undecodable)
    path, msg = one("missing-image", "no image")
    assert path == str(orphan) and str(root / "images" / "sub" / "gone.*") in msg
    path, msg = one("duplicate-name", "share one label file")
    assert path == str(root / "images" / "b.png") and "b.jpg" in msg
    # b.jpg sorts before b.png and is kept; b.png is left out.
    assert ds.all_files == ["images/a.png", "images/b.jpg", "images/sub/c.png"]

    # What is left: lines 1 and 8 of a.txt; line 8 clamped to the image's left edge.
    _, target = ds[0]
    assert target["labels"].tolist() == [1, 2]
    assert target["boxes"].tolist() == [[3.0, 2.0, 10.0, 8.0], [0.0, 0.0, 20.0, 16.0]]
    _, unreadable = ds[2]
    assert len(unreadable["labels"]) == 0  # its instances are dropped (and reported above)


def test_errors_stop_training_naming_file_and_line(tmp_path: Path):
    root = _yolo_set(tmp_path / "yolo")
    label = _label(root / "labels" / "a.txt", _polygon_line(0, RECT_A), "3 0.1 0.1 0.5 0.1 0.5 0.5")
    with pytest.raises(DatasetError) as e:
        YoloDataset(root)  # no collecting sink: the first error raises
    assert str(e.value) == (f"{label}: line 2: class 3 is not in the 2 class names of {root / 'data.yaml'} "
                            "(0..1); instance left out")

    # Warnings do not stop it: an orphan label file is logged and the data set opens.
    _label(root / "labels" / "a.txt", _polygon_line(0, RECT_A))
    _label(root / "labels" / "lost.txt", _polygon_line(0, RECT_A))
    assert len(YoloDataset(root)) == 3


# ---------------------------------------------------------------- detection and build


def test_detect_format_and_open_dataset(tmp_path: Path, reference):
    root = _yolo_set(tmp_path / "yolo")
    cfg = DataConfig()
    assert detect_format(root, cfg) == "yolo"
    assert detect_format(root / "data.yaml", cfg) == "yolo"
    for path in (root, root / "data.yaml"):
        ds = open_dataset(DataConfig(path=str(path), format="auto"))
        assert isinstance(ds, YoloDataset)
        assert_same_targets(ds, reference)

    # Not YOLO: a YAML without names, a mask folder, and images/ + labels/ holding mask images.
    (tmp_path / "other.yaml").write_text("classes: [a]\n")
    assert not YoloDataset.detect(tmp_path / "other.yaml", cfg)
    assert not YoloDataset.detect(tmp_path / "masks", cfg)
    masks_like = tmp_path / "masks_like"
    _image(masks_like / "images" / "m.png")
    _image(masks_like / "labels" / "m.png")
    assert not YoloDataset.detect(masks_like, cfg)
    assert YoloDataset.from_config(cfg, root) == {}


def test_no_label_file_at_all_is_a_warning(tmp_path: Path):
    root = tmp_path / "d"
    _image(root / "images" / "a.png")
    _image(root / "images" / "b.png")
    (root / "labels").mkdir()
    (root / "data.yaml").write_text("names: [cat]\n")
    sink = ProblemSink(collect=True)
    ds = YoloDataset(root, sink=sink)
    assert [(p.severity, p.kind, p.path) for p in sink.problems] == [(WARNING, "no-labels", str(root))]
    assert f"for {root / 'images' / 'a.png'} it would be {root / 'labels' / 'a.txt'}" in sink.problems[0].message
    assert len(ds) == 2 and len(ds[0][1]["labels"]) == 0
