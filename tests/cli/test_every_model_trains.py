"""`segtune train --model NAME` for every registered model: one short run on tiny inputs, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segtune.cli.main import main
from segtune.models import MODELS
from tests.conftest import TINY_MODEL, make_mask_folder
from tests.evaluation.keypoint_data import make_coco_keypoints

GENERIC = {"fasterrcnn", "maskrcnn", "keypointrcnn"}  # need a --backbone


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("every-model")
    return {"masks": make_mask_folder(root / "masks", n=4), "keypoints": make_coco_keypoints(root / "kp")}


@pytest.mark.parametrize("name", MODELS.names())
def test_train_one_short_run(name: str, datasets: dict[str, Path], tmp_path: Path) -> None:
    spec = MODELS.get(name)
    data = datasets["keypoints" if spec.has_keypoints else "masks"]
    run = tmp_path / "run"
    extra = ["--backbone", "mobilenet_v3_small"] if name in GENERIC else []
    code = main(["train", "--model", name, "--data", str(data), "--out", str(run), "--epochs", "1",
                 "--max-iters-per-epoch", "1", "--batch-size", "2", "--test-size", "1", "--tensorboard", "false",
                 *extra, *[f"{k}={v}" for k, v in TINY_MODEL.items()]])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())[0]["metrics"]
    expected = {"bbox"} | ({"segm"} if spec.has_masks else set()) | ({"keypoints"} if spec.has_keypoints else set())
    assert set(metrics) == expected
    assert main(["evaluate", str(run)]) == 0
