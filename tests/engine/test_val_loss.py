"""The validation loss: the loss terms on the test split every epoch, without touching training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from segtune.data import build_dataset
from segtune.config import DataConfig
from segtune.engine import configure, train
from segtune.engine.val_loss import validation_loss
from segtune.models import build_model
from tests.conftest import TINY_MODEL, make_mask_folder
from tests.models.helpers import SCRATCH, SMALL


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mask_folder(tmp_path_factory.mktemp("val") / "data", n=6)


def test_the_validation_loss_is_in_the_metrics_and_the_plot(data: Path, tmp_path: Path) -> None:
    settings = {"data.path": str(data), "train.out": str(tmp_path / "run"), "train.epochs": 2,
                "train.max_iters_per_epoch": 2, "data.test_size": 2, "train.batch_size": 2,
                "train.tensorboard": False, **TINY_MODEL,
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
    dataset = build_dataset(DataConfig(path=str(data)), train=False)  # evaluation targets: crowd and all
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
