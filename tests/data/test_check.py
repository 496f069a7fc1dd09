"""The data doctor: every defect of a broken data set is reported with its file; counts, histogram, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segtune.cli.main import main
from segtune.config import DataConfig
from segtune.data.base import ERROR, WARNING, Problem
from segtune.data.check import CheckReport, check_dataset, raise_on_errors
from segtune.errors import DatasetError
from tests.conftest import make_mask_folder

S = 32  # image side


def _image(path: Path, size=(S, S), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)


def _mask(path: Path, rects: dict[int, tuple[int, int, int, int]], size=(S, S)) -> None:
    """``rects``: instance value -> (y0, y1, x0, x1) python slices."""
    mask = np.zeros(size, np.uint8)
    for value, (y0, y1, x0, x1) in rects.items():
        mask[y0:y1, x0:x1] = value
    Image.fromarray(mask, mode="L").save(path)


def _pair(root: Path, stem: str, rects: dict[int, tuple[int, int, int, int]], size=(S, S)) -> tuple[Path, Path]:
    image, mask = root / "PNGImages" / f"{stem}.png", root / "PedMasks" / f"{stem}_mask.png"
    _image(image, size)
    _mask(mask, rects, size)
    return image, mask


@pytest.fixture
def broken(tmp_path: Path) -> dict[str, Path]:
    """A mask folder with one of each defect; returns the files by defect."""
    root = tmp_path / "broken"
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir()
    files: dict[str, Path] = {"root": root}
    _pair(root, "good", {1: (2, 20, 3, 15), 2: (10, 30, 18, 30)})
    files["truncated"], _ = _pair(root, "truncated", {1: (2, 20, 3, 15)})
    data = files["truncated"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["not_image"], _ = _pair(root, "not_image", {1: (2, 20, 3, 15)})
    files["not_image"].write_text("this is not a PNG\n")
    _image(root / "PNGImages" / "size_mismatch.png", (S, S))
    files["size_mismatch"] = root / "PedMasks" / "size_mismatch_mask.png"
    _mask(files["size_mismatch"], {1: (2, 10, 2, 10)}, size=(S, S - 8))
    _, files["thin"] = _pair(root, "thin", {1: (2, 20, 3, 15), 2: (5, 25, 20, 21)})  # one pixel wide
    _, files["tiny"] = _pair(root, "tiny", {1: (2, 20, 3, 15), 2: (25, 26, 25, 26)})  # one pixel: a 1x1 box
    _pair(root, "empty", {})
    files["no_mask"] = root / "PNGImages" / "no_mask.png"
    _image(files["no_mask"])
    files["no_image"] = root / "PedMasks" / "no_image_mask.png"
    _mask(files["no_image"], {1: (2, 10, 2, 10)})
    return files


def _find(report: CheckReport, kind: str, path: Path) -> Problem:
    found = [p for p in report.problems if p.kind == kind and p.path == str(path)]
    assert found, f"no {kind} problem for {path}; got:\n" + "\n".join(f"{p.kind} {p}" for p in report.problems)
    return found[0]


def test_every_defect_is_reported_with_its_file(broken: dict[str, Path]):
    report = check_dataset(DataConfig(path=str(broken["root"])), progress=False)

    assert _find(report, "truncated", broken["truncated"]).severity == ERROR
    assert _find(report, "unreadable", broken["not_image"]).severity == ERROR
    mismatch = _find(report, "size-mismatch", broken["size_mismatch"])
    assert mismatch.severity == ERROR and "24x32" in mismatch.message and "32x32" in mismatch.message
    # one pixel wide: kept, with a box 1 px wide (its pixel extent), and named as small
    thin = _find(report, "small-box", broken["thin"])
    assert thin.severity == WARNING and "1x20 px" in thin.message and "instance 2 of 2" in thin.message
    tiny = _find(report, "small-box", broken["tiny"])
    assert tiny.severity == WARNING and "1x1 px" in tiny.message and "instance 2 of 2" in tiny.message
    assert _find(report, "missing-mask", broken["no_mask"]).severity == ERROR
    assert _find(report, "missing-image", broken["no_image"]).severity == ERROR
    assert report.empty_images == ["empty.png"]  # a negative: reported, but not a problem
    assert not any("empty.png" in p.path for p in report.problems)

    # counts: 7 paired images (no_mask is not paired), 3 unreadable; good 2 + thin 2 + tiny 2 + empty 0 instances
    assert (report.images, report.unreadable, report.instances) == (7, 3, 6)
    assert report.instances_per_image == (0, 2, 2)
    assert report.class_counts == {"pedestrian": 6}
    assert report.small_boxes == 2
    assert not report.ok and len(report.errors) == 5 and len(report.warnings) == 2


def test_label_outside_the_class_list_is_an_error(tmp_path: Path):
    root = tmp_path / "multi"
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir()
    _pair(root, "a", {1: (2, 12, 2, 12), 2: (14, 30, 14, 30)})
    _, bad = _pair(root, "b", {1: (2, 12, 2, 12), 3: (14, 30, 14, 30)})
    class_map = tmp_path / "classes.yaml"
    class_map.write_text(yaml.safe_dump({"classes": ["cat", "dog"], "values": {1: "cat", 2: "dog"}}))
    report = check_dataset(DataConfig(path=str(root), class_map=str(class_map)), progress=False)
    problem = _find(report, "unknown-label", bad)
    assert problem.severity == ERROR and "mask value 3" in problem.message
    assert report.class_counts == {"cat": 2, "dog": 1}
    assert not report.ok


def test_clean_data_set_is_ok(tmp_path: Path):
    root = make_mask_folder(tmp_path / "clean", n=5, size=(40, 48))
    report = check_dataset(DataConfig(path=str(root)), progress=False)
    expected = sum(len(np.unique(np.asarray(Image.open(p)))) - 1 for p in sorted((root / "PedMasks").iterdir()))
    assert report.ok and report.errors == []
    assert (report.images, report.instances) == (5, expected)
    assert report.empty_images == ["img000.png"]
    assert report.height_range == (40, 40) and report.width_range == (48, 48)
    raise_on_errors(report)  # nothing to raise


def test_raise_on_errors_quotes_the_first_errors_and_counts_them(broken: dict[str, Path]):
    report = check_dataset(DataConfig(path=str(broken["root"])), progress=False)
    with pytest.raises(DatasetError) as e:
        raise_on_errors(report)
    message = str(e.value)
    assert "5 error(s)" in message
    for problem in report.errors:  # five errors: all quoted verbatim, as data check prints them
        assert str(problem) in message
    assert "segtune data check" in message


def test_format_text_groups_by_kind_and_caps_long_groups():
    problems = [Problem(ERROR, "truncated", f"img{i:02d}.png", "image data is truncated") for i in range(25)]
    problems.append(Problem(WARNING, "small-box", "m.png", "1 box(es) narrower than 2 px"))
    report = CheckReport(path="data", format="masks", classes=["a", "b"], images=30, instances=4,
                         class_counts={"a": 4, "b": 1}, instances_per_image=(0, 0.0, 2), problems=problems)
    text = report.format_text()
    assert "ERROR truncated (25):" in text and "WARNING small-box (1):" in text
    assert "img19.png: image data is truncated" in text and "img20.png" not in text
    assert "... and 5 more" in text
    assert text.index("ERROR truncated") < text.index("WARNING small-box")
    lines = text.splitlines()
    bar_a = next(line for line in lines if line.strip().startswith("a "))
    bar_b = next(line for line in lines if line.strip().startswith("b "))
    assert bar_a.count("#") == 4 * bar_b.count("#") > 0  # histogram bars scale with the counts
    assert "25 error(s)" in text.splitlines()[-1]


# ---------------------------------------------------------------- the command


def test_cli_exits_1_on_a_broken_set_and_names_the_files(broken: dict[str, Path], capsys):
    assert main(["data", "check", str(broken["root"])]) == 1
    out = capsys.readouterr().out
    for key in ("truncated", "not_image", "size_mismatch", "thin", "tiny", "no_mask", "no_image"):
        assert str(broken[key]) in out, key
    assert "images: 7" in out and "5 error(s)" in out


def test_cli_exits_0_on_a_clean_set_and_prints_counts_and_histogram(tmp_path: Path, capsys):
    root = make_mask_folder(tmp_path / "clean", n=4)
    report = check_dataset(DataConfig(path=str(root)), progress=False)
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "images: 4" in out and f"instances: {report.instances}" in out
    assert any(line.strip().startswith(f"pedestrian  {report.instances}  #") for line in out.splitlines())
    assert "result: OK" in out


def test_cli_passes_data_flags_through(tmp_path: Path, capsys):
    root = make_mask_folder(tmp_path / "renamed", n=3)
    (root / "PNGImages").rename(root / "imgs")
    assert main(["data", "check", str(root), "--images-dir", "imgs", "--min-box-size", "1000"]) == 0
    out = capsys.readouterr().out
    assert "small-box" in out  # every box is below 1000 px: warnings, still exit 0


def test_cli_missing_folder_is_an_input_error(tmp_path: Path, capsys):
    assert main(["data", "check", str(tmp_path / "nothing")]) == 2
    assert str(tmp_path / "nothing") in capsys.readouterr().err


@pytest.mark.slow
def test_penn_fudan_is_clean(pennfudan: Path):
    report = check_dataset(DataConfig(path=str(pennfudan)), progress=False)
    assert (report.images, report.instances) == (170, 423)
    assert report.ok, report.format_text()
    assert report.class_counts == {"pedestrian": 423}


# ---------------------------------------------------------------- COCO-only defects


def test_coco_defects_are_reported_with_the_annotation_file_and_id(tmp_path: Path):
    root = tmp_path / "coco"
    root.mkdir()
    for name in ("a.png", "b.png"):
        _image(root / name)
    square = [2, 2, 20, 2, 20, 20, 2, 20]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": S, "width": S},
                   {"id": 2, "file_name": "b.png", "height": S, "width": S},
                   {"id": 3, "file_name": "b.png", "height": S, "width": S}],  # duplicate file name
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [square], "bbox": [2, 2, 18, 18], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5]], "bbox": [1, 1, 4, 4],
             "iscrowd": 0},  # a polygon of two points
            {"id": 12, "image_id": 99, "category_id": 1, "segmentation": [square], "bbox": [2, 2, 18, 18],
             "iscrowd": 0},  # points at no image
            {"id": 13, "image_id": 2, "category_id": 7, "segmentation": [square], "bbox": [2, 2, 18, 18],
             "iscrowd": 0},  # category outside the list
            {"id": 14, "image_id": 2, "category_id": 1, "segmentation": [[4, 4, 30, 4, 30, 6, 4, 6]],
             "bbox": [4, 4, 26, 1.5], "iscrowd": 0},  # the file's box is 1.5 px high, below min_box_size
            {"id": 15, "image_id": 1, "category_id": 1, "segmentation": [[10, 10, 10, 10, 10, 10]],
             "bbox": [10, 10, 0, 0], "iscrowd": 0},  # a polygon that covers no pixel
        ],
    }
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps(data))
    report = check_dataset(DataConfig(path=str(annotations)), progress=False)

    assert report.format == "coco" and report.path == str(annotations)
    assert "annotation 11" in _find(report, "bad-polygon", annotations).message
    assert "annotation 12" in _find(report, "dangling-id", annotations).message
    unknown = _find(report, "unknown-label", annotations)
    assert "annotation 13" in unknown.message and "7" in unknown.message
    assert "'b.png'" in _find(report, "duplicate-name", annotations).message
    small = [p.message for p in report.problems if p.kind == "small-box"]
    assert any("image b.png" in m and "26x1.5 px" in m for m in small), small
    assert any("image a.png" in m and "0x0 px" in m for m in small), small  # annotation 15's own box
    assert "15" in _find(report, "empty-mask", annotations).message
    assert {p.kind for p in report.warnings} == {"small-box", "empty-mask"}
    assert {p.kind for p in report.errors} == {"bad-polygon", "dangling-id", "unknown-label", "duplicate-name"}
    # every annotation the file has is counted, the empty one too (training leaves it out; evaluation keeps it)
    assert (report.images, report.instances) == (2, 3)
    assert report.class_counts == {"thing": 3}
    assert not report.ok
