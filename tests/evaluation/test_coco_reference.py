"""segtune's COCO path against answers published outside the project, to the last digit.

cocoapi's reference fake detections on 100 COCO val2014 images, and faster-coco-eval's keypoints
case, go through segtune's own COCO reader (with blank images of the declared sizes written here),
``dataset_ground_truth`` and ``score``: the way a user's COCO file is evaluated. Nothing here calls a
COCO library on the original files. See tests/fixtures/coco_reference/README.md for sources and licence.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.data import CocoDataset
from segtune.evaluation import STAT_NAMES, dataset_ground_truth, score
from segtune.evaluation.coco_eval import KEYPOINT_STAT_NAMES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "coco_reference"

# faster-coco-eval tests/test_cocoapi_fake_data.py (cocoapi's results/val2014_fake_eval_res.txt, full precision)
PUBLISHED = {
    "bbox": [0.5045806987249628, 0.6969727247299577, 0.5729816669904824, 0.5856257209410443,
             0.5193996948036719, 0.5013978986347466, 0.38681277964578054, 0.5936795762842003,
             0.595352982877607, 0.6398109626113442, 0.5664205978994309, 0.5642905982905982],
    "segm": [0.3195452758576433, 0.5622883972521636, 0.29892653412086784, 0.3873740315997838,
             0.31018272403369485, 0.3269339071005138, 0.2682297225711534, 0.41544868114906375,
             0.4168394992198818, 0.4694498622754236, 0.37675922666197265, 0.3814715099715099],
}
# faster-coco-eval tests/test_keypoints.py
PUBLISHED_KEYPOINTS = [0.5048844884488449, 0.7227722772277227, 0.6336633663366337, 0.46633663366336636,
                       0.7504950495049505, 0.5181818181818182, 0.7272727272727273, 0.6363636363636364,
                       0.4666666666666666, 0.75]
TOLERANCE = 1e-6


def _unpack(name: str, dest: Path) -> Path:
    out = dest / name.removesuffix(".gz")
    with gzip.open(FIXTURES / name, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def _coco_folder(tmp: Path, annotations: str) -> Path:
    """The annotation file unpacked into ``tmp``, with a blank image of each declared size beside it."""
    path = _unpack(annotations, tmp)
    for image in json.loads(path.read_text())["images"]:
        blank = np.zeros((image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(blank).save(tmp / image["file_name"], compress_level=1)
    return path


def _results(name: str) -> list[dict]:
    with gzip.open(FIXTURES / name, "rt") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def val2014_gt(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Ground truth of the 100-image COCO file as segtune builds it for evaluation."""
    path = _coco_folder(tmp_path_factory.mktemp("val2014"), "instances_val2014_100.json.gz")
    dataset = CocoDataset(path, keep_crowd=True)  # keep_crowd: the evaluation split's reader
    assert len(dataset) == 100 and len(dataset.classes) == 80
    return dataset_ground_truth(dataset, dataset.classes)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_the_reference_fake_results_score_the_published_numbers(val2014_gt: dict, iou_type: str) -> None:
    results = _results(f"instances_val2014_fake{iou_type}100_results.json.gz")
    got = score(val2014_gt, results, (iou_type,), print_fn=lambda line: None)[iou_type]
    for name, expected in zip(STAT_NAMES, PUBLISHED[iou_type]):
        assert got[name] == pytest.approx(expected, abs=TOLERANCE), f"{iou_type} {name}"


def test_the_ground_truth_keeps_the_files_own_boxes_areas_and_ids(val2014_gt: dict) -> None:
    """Every annotation of the file is in segtune's ground truth with its own bbox, area, ids and crowd flag."""
    with gzip.open(FIXTURES / "instances_val2014_100.json.gz", "rt") as f:
        original = json.load(f)
    assert sorted(c["id"] for c in val2014_gt["categories"]) == sorted(c["id"] for c in original["categories"])
    ours = sorted((a["image_id"], a["category_id"], a["iscrowd"], tuple(a["bbox"]), a["area"])
                  for a in val2014_gt["annotations"])
    theirs = sorted((a["image_id"], a["category_id"], a["iscrowd"], tuple(a["bbox"]), a["area"])
                    for a in original["annotations"])
    assert len(ours) == len(theirs) == 839
    for a, b in zip(ours, theirs):
        assert a[:3] == b[:3]
        assert a[3] == pytest.approx(b[3], abs=1e-9) and a[4] == b[4]


def test_the_keypoints_case_scores_the_published_numbers(tmp_path: Path) -> None:
    path = _coco_folder(tmp_path, "person_keypoints_gt.json.gz")
    dataset = CocoDataset(path, keep_crowd=True)
    assert dataset.keypoint_names is not None and len(dataset.keypoint_names) == 17
    gt = dataset_ground_truth(dataset, dataset.classes)
    got = score(gt, _results("person_keypoints_dt.json.gz"), ("keypoints",), print_fn=lambda line: None)["keypoints"]
    for name, expected in zip(KEYPOINT_STAT_NAMES, PUBLISHED_KEYPOINTS):
        assert got[name] == pytest.approx(expected, abs=TOLERANCE), f"keypoints {name}"
