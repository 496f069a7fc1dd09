"""The validation loss: the loss terms on the test split every epoch, without touching training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.config import DataConfig
from segtune.data import CocoDataset, build_dataset, prepare
from segtune.engine import configure, train
from segtune.engine.val_loss import ValidationLoss, validation_loss
from segtune.models import build_model
from tests.conftest import SMALL_MODEL, make_mask_folder
from tests.models.helpers import SCRATCH, SMALL


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mask_folder(tmp_path_factory.mktemp("val") / "data", n=6)


def test_the_validation_loss_is_in_the_metrics_and_the_plot(data: Path, tmp_path: Path) -> None:
    settings = {"data.path": str(data), "train.out": str(tmp_path / "run"), "train.epochs": 2,
                "train.max_iters_per_epoch": 2, "data.test_size": 2, "train.batch_size": 2,
                "train.tensorboard": False, **SMALL_MODEL,
                # GroupNorm: an untrained BatchNorm model's eval-mode losses (what evaluation sees) can overflow
                "model.norm": "gn"}
    result = train(configure(("test", settings)))
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    assert len(rows) == 2
    for row in rows:
        assert 0 < float(row["val/loss"]) < float("inf")
        terms = [k for k in row if k.startswith("val/loss_")]
        assert {"val/loss_classifier", "val/loss_box_reg", "val/loss_mask", "val/loss_objectness"} <= set(terms)
        assert float(row["val/loss"]) == pytest.approx(sum(float(row[k]) for k in terms), rel=1e-6)
    history = json.loads((result.run_dir / "metrics.json").read_text())
    # the same loss terms as training's
    assert set(history[0]["val"]) == {k for k in history[0]["train"] if k.startswith("loss")}
    assert (result.run_dir / "results.png").stat().st_size > 0

    # off: no val columns, and training itself is the same (the hook forks the random streams)
    off = train(configure(("test", {**settings, "train.out": str(tmp_path / "off"), "train.val_loss": False})))
    header = (off.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "val/" not in header
    def losses(history: list) -> list:
        return [{k: v for k, v in r["train"].items() if k.startswith("loss")} for r in history]

    assert losses(off.history) == losses(result.history)


def test_it_learns_nothing_and_leaves_the_random_state_alone(data: Path) -> None:
    model = build_model("maskrcnn_resnet50_fpn", num_classes=2, **SCRATCH, **SMALL)
    test = build_dataset(DataConfig(path=str(data)), train=False)
    dataset = test.view(test.files, transforms=test.transforms, keep_crowd=False)  # the training rule
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    rng = torch.random.get_rng_state()
    first = validation_loss(model, dataset, device=torch.device("cpu"), batch_size=2, seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert not model.training  # its mode is restored
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert first == validation_loss(model, dataset, device=torch.device("cpu"), batch_size=2, seed=3)
    assert first["loss"] > 0 and "loss_mask" in first


def test_crowd_regions_and_flat_boxes_of_the_test_split_stay_out_of_the_loss(tmp_path: Path) -> None:
    """Evaluation keeps them; the loss takes the training rule (torchvision rejects a zero-width box)."""
    Image.fromarray(np.full((64, 80, 3), 60, dtype=np.uint8)).save(tmp_path / "a.png")
    anns = [{"bbox": [6, 8, 30, 30], "iscrowd": 0}, {"bbox": [40, 10, 20, 20], "iscrowd": 1},
            {"bbox": [70, 5, 0, 10], "iscrowd": 0}]
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 80}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1, "area": a["bbox"][2] * a["bbox"][3], **a}
                            for k, a in enumerate(anns)]}
    (tmp_path / "boxes.json").write_text(json.dumps(coco))
    test = prepare(CocoDataset(tmp_path / "boxes.json"), train=False)  # the test split as evaluation sees it
    assert len(test.load(0)[1]["boxes"]) == 3

    class Trainer:  # what the hook reads of the trainer
        test_ds = test

    hook = ValidationLoss()
    hook.before_train(Trainer())
    assert len(hook.dataset[0][1]["boxes"]) == 1
    model = build_model("fasterrcnn_resnet50_fpn", num_classes=2, **SCRATCH, **{**SMALL, "min_size": 64})
    values = validation_loss(model, hook.dataset, device=torch.device("cpu"))
    assert torch.isfinite(torch.tensor(values["loss"]))
