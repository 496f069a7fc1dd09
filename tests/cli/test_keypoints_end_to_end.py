"""Keypoint R-CNN end to end through the ``segtune`` command: train on a COCO keypoints file, evaluate, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.checkpoint import load_checkpoint
from segtune.cli.main import main
from segtune.evaluation import KEYPOINT_STAT_NAMES, STAT_NAMES
from segtune.models.min_score import set_min_score
from segtune.predict import Predictor, predict_to_folder
from tests.conftest import TINY_MODEL
from tests.evaluation.keypoint_data import KEYPOINT_NAMES, SKELETON, make_coco_keypoints

# Keypoint R-CNN's head runs eight 512-channel convolutions on every RoI: keep few RoIs so a CPU step is quick.
TINY = [f"{k}={v}" for k, v in {**TINY_MODEL, "model.box_batch_size_per_image": 16,
                                  "model.box_detections_per_img": 4}.items()]


@pytest.fixture(scope="module")
def keypoint_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kp")
    data = make_coco_keypoints(root / "data")
    run = root / "run"
    code = main(["train", "--data", str(data), "--model", "keypointrcnn_resnet50_fpn", "--weights", "none",
                 "--weights-backbone", "none", "--epochs", "1", "--max-iters-per-epoch", "1", "--test-size", "2",
                 "--out", str(run), *TINY])
    assert code == 0
    return data, run


def test_train_reports_keypoint_ap(keypoint_run: tuple[Path, Path]) -> None:
    _, run = keypoint_run
    history = json.loads((run / "metrics.json").read_text())
    metrics = history[0]["metrics"]
    assert set(metrics) == {"bbox", "keypoints"}  # Keypoint R-CNN predicts no masks
    assert list(metrics["bbox"]) == list(STAT_NAMES)
    assert list(metrics["keypoints"]) == list(KEYPOINT_STAT_NAMES)  # COCO's 10 keypoint stats
    assert all(v == -1.0 or 0.0 <= v <= 1.0 for v in metrics["keypoints"].values())
    assert "keypoints AP" in (run / "train.log").read_text()
    ckpt = load_checkpoint(run / "weights" / "best.pt")
    assert ckpt["num_keypoints"] == 3 and ckpt["keypoint_names"] == KEYPOINT_NAMES and ckpt["skeleton"] == SKELETON
    assert ckpt["model"]["roi_heads.keypoint_predictor.kps_score_lowres.weight"].shape[1] == 3


def test_evaluate_scores_keypoints(keypoint_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = keypoint_run
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run / "weights" / "best.pt"), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert list(metrics["keypoints"]) == list(KEYPOINT_STAT_NAMES)


def test_predict_writes_keypoints(keypoint_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = keypoint_run
    preds = tmp_path / "preds"
    assert main(["predict", str(run / "weights" / "best.pt"), str(data.parent / "images"), "--out", str(preds),
                 "--score-threshold", "0"]) == 0
    assert len(list(preds.glob("*.png"))) == 4
    # A model trained for one step from scratch scores every box low: with the threshold inside it at 0 too
    # it keeps its ranked boxes (on a noisy image; on the set's flat ones it finds none), and each carries its
    # keypoints into the JSON.
    predictor = Predictor.from_checkpoint(run, device="cpu", score_threshold=0.0)
    set_min_score(predictor.model, 0.0)
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(noise)
    summary = predict_to_folder(predictor, [str(data.parent / "images"), str(noise)], tmp_path / "all")
    results = json.loads(summary.results_file.read_text())
    assert results and all(len(r["keypoints"]) == 9 and len(r["keypoint_scores"]) == 3 for r in results)


class _FixedPose(torch.nn.Module):
    """Stands in for a trained Keypoint R-CNN: one person with three keypoints on every image."""

    def forward(self, images):
        return [{"boxes": torch.tensor([[8.0, 6.0, 30.0, 50.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1]),
                 "keypoints": torch.tensor([[[19.0, 9.0, 1.0], [10.0, 28.0, 1.0], [28.0, 28.0, 1.0]]]),
                 "keypoints_scores": torch.tensor([[3.0, 2.5, 1.5]])} for _ in images]


def test_predictions_carry_and_draw_keypoints(keypoint_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = keypoint_run
    predictor = Predictor.from_checkpoint(run / "weights" / "best.pt", device="cpu")
    assert predictor.keypoint_names == KEYPOINT_NAMES
    assert predictor.skeleton == [(0, 1), (0, 2)]  # COCO's 1-based pairs, 0-based for drawing
    predictor.model = _FixedPose()
    image = data.parent / "images" / "img0.png"
    pred = predictor(image)
    assert pred.keypoints.shape == (1, 3, 3) and pred.keypoint_scores.shape == (1, 3)
    picture = pred.draw()
    plain = Predictor(_FixedPose(), ["person"]).__call__(image).draw()  # same, without the skeleton
    changed = (picture != plain).any(dim=0)
    # The skeleton's two lines, head (19, 9) to each hand at (10, 28) and (28, 28), pass their midpoints.
    assert changed[17:21, 13:17].any() and changed[17:21, 22:26].any()
    assert not changed[40:, :].any()  # nothing drawn below the hands
    summary = predict_to_folder(predictor, [str(image)], tmp_path / "preds")
    (entry,) = json.loads(summary.results_file.read_text())
    assert entry["keypoints"] == [19.0, 9.0, 1.0, 10.0, 28.0, 1.0, 28.0, 28.0, 1.0]
    assert entry["keypoint_scores"] == [3.0, 2.5, 1.5] and entry["category_name"] == "person"


def test_keypoint_model_on_data_without_keypoints_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import make_mask_folder

    data = make_mask_folder(tmp_path / "data", n=4)
    code = main(["train", "--data", str(data), "--model", "keypointrcnn_resnet50_fpn", "--weights", "none",
                 "--weights-backbone", "none", "--epochs", "1", "--test-size", "2", "--out", str(tmp_path / "run"),
                 *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert "has no keypoints" in err and "keypointrcnn_resnet50_fpn" in err
    assert not (tmp_path / "run").exists()
