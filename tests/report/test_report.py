"""report.html: written by a real (short) training run, opened in a real headless browser, rebuilt by
``segtune report`` and written for any checkpoint by ``segtune evaluate --report``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from segtune.cli.main import main
from segtune.engine import configure, train
from segtune.report import page as page_module
from tests.conftest import SMALL_MODEL, TINY_MODEL, short_run_settings
from tests.detector import Detector

from .browser import check_screenshot

SECTIONS = ("run", "training", "quality-bbox", "quality-segm", "labels", "gallery")


@pytest.fixture(scope="module")
def run_dir(detector: Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's trained Mask R-CNN run (tests/detector.py: 4 test images, detections that
    match them), its report rebuilt with two gallery pictures a page."""
    run = Path(shutil.copytree(detector.run, tmp_path_factory.mktemp("report") / "run"))
    assert (run / "report.html").is_file()  # written by the training run itself
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(page_module, "PAGE_SIZE", 2)
        assert main(["report", str(run)]) == 0
    return run


def _sections(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', html)


def test_every_training_run_writes_a_self_contained_report(run_dir: Path) -> None:
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert _sections(html) == list(SECTIONS)
    # Everything is inside the page: no script, style or image fetched from anywhere.
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert html.count('src="data:image/png;base64,') >= 15  # plots
    assert "--score-threshold" in html  # the best-F1 threshold, suggested for predict
    # The page is drawn from the test split's detections: those of a model that finds both classes.
    detections = json.loads((run_dir / "test_detections.json").read_text())["results"]
    assert {d["category_id"] for d in detections if d["score"] >= 0.5} == {1, 2}
    for name in ("steps.csv", "test_detections.json", "run_info.json"):
        assert (run_dir / name).is_file()


def test_the_report_opens_in_a_real_browser(run_dir: Path, browser, tmp_path: Path) -> None:
    page = browser.open(run_dir / "report.html")
    assert not page.is_error_page()
    assert page.broken_images() == []
    assert page.count("figure img") >= 15
    # The gallery: 4 test images, 2 a page, worst first.
    assert page.count("#gallery-items .item") == 2
    assert page.text("#gallery-page").startswith("page 1 of 2 (4 images)")
    page.click("#gallery-next")
    assert page.text("#gallery-page").startswith("page 2 of 2")
    assert page.count("#gallery-items .item") == 2
    assert page.broken_images() == []  # the pictures drawn for the new page load too
    page.click("#gallery-prev")
    assert page.text("#gallery-page").startswith("page 1 of 2")
    assert page.console_errors() == []
    shot = page.screenshot(tmp_path / "report.png")
    check_screenshot(shot, page=page)


def test_segtune_report_rebuilds_the_page_from_the_run_folder(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "again.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert _sections(out.read_text(encoding="utf-8")) == list(SECTIONS)


def test_evaluate_writes_the_quality_sections_for_a_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.html"
    assert main(["evaluate", str(run_dir / "weights" / "best.pt"), "--report", str(out)]) == 0
    assert _sections(out.read_text(encoding="utf-8")) == ["run", "quality-bbox", "quality-segm", "labels", "gallery"]


def test_a_folder_that_is_not_a_run_gets_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "segtune: error:" in err and str(tmp_path) in err and "config.yaml" in err
    assert "Traceback" not in err


def test_the_report_at_the_end_of_a_run_reads_no_annotation_file_again(tmp_path: Path, monkeypatch) -> None:
    import segtune.data.coco as coco_module
    from tests.cli.test_formats import make_coco

    path = make_coco(tmp_path / "data")
    calls = []
    read = coco_module._read_json
    monkeypatch.setattr(coco_module, "_read_json", lambda p: calls.append(Path(p)) or read(p))
    result = train(configure(("test", short_run_settings(path, tmp_path / "run", **{
        "train.max_iters_per_epoch": 1, "data.test_size": 2}))))
    assert (result.run_dir / "report.html").is_file() and calls == [path]


def test_a_keypoint_model_without_masks_gets_its_report(tmp_path: Path) -> None:
    from tests.evaluation.keypoint_data import make_coco_keypoints

    data = make_coco_keypoints(tmp_path / "data")
    settings = short_run_settings(data, tmp_path / "run", **{
        "model.name": "keypointrcnn_resnet50_fpn", "train.max_iters_per_epoch": 1, "data.test_size": 2,
        "model.box_batch_size_per_image": 16, "model.box_detections_per_img": 4})
    for key in SMALL_MODEL.keys() - TINY_MODEL.keys() - {"model.name"}:  # a torchvision model: its own backbone
        settings.pop(key)
    result = train(configure(("test", settings)))
    html = (result.run_dir / "report.html").read_text(encoding="utf-8")
    assert _sections(html) == ["run", "training", "quality-bbox", "labels", "gallery"]
