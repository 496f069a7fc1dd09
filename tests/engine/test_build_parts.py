"""Building a run's parts: the data set opened once, a model and data set built by the caller, and a
trainer handed parts of the caller's own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

import segtune.data.coco as coco_module
from segtune.data import MaskFolderDataset
from segtune.engine import configure, train
from segtune.engine.hooks import TrainerView
from segtune.engine.parts import build_parts
from segtune.engine.trainer import Trainer
from segtune.models import build_from_config
from tests.cli.test_formats import make_coco
from tests.conftest import TINY_MODEL, make_mask_folder


def _settings(data: Path, out: Path, **extra) -> dict:
    return {"data.path": str(data), "train.out": str(out), "train.epochs": 1, "train.max_iters_per_epoch": 2,
            "data.test_size": 2, "train.batch_size": 2, "train.tensorboard": False, **TINY_MODEL, **extra}


def test_a_coco_file_is_parsed_once_per_training_run(tmp_path: Path, monkeypatch) -> None:
    path = make_coco(tmp_path / "data")
    calls = []
    read = coco_module._read_json

    def counting(p):
        calls.append(Path(p))
        return read(p)

    monkeypatch.setattr(coco_module, "_read_json", counting)
    result = train(configure(("test", _settings(path, tmp_path / "run"))))
    assert result.history and calls == [path]  # check, splits, ground truth and evaluation share one reading


def test_train_takes_a_model_and_a_data_set_built_by_the_caller(tmp_path: Path) -> None:
    data = make_mask_folder(tmp_path / "data", n=6)
    cfg = configure(("test", _settings(data, tmp_path / "run", **{"train.lr": 1e-12})))
    dataset = MaskFolderDataset(data)
    model = build_from_config(cfg.model, num_classes=2, classes=["pedestrian"], load_weights=False)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.fill_(0.25)  # a mark of the caller's model
    result = train(cfg, model=model, dataset=dataset)
    saved = torch.load(result.run_dir / "weights" / "best.pt", map_location="cpu", weights_only=True)["model"]
    # lr 1e-12: the weights trained are the ones given, all but unchanged (the trainer built no model of its own)
    assert torch.allclose(saved["roi_heads.box_predictor.cls_score.bias"], torch.full((2,), 0.25), atol=1e-6)
    assert set(result.history[0]["metrics"]) == {"bbox", "segm"}


def test_a_trainer_runs_the_parts_it_is_handed(tmp_path: Path) -> None:
    """The optimiser and schedule swapped for the caller's own (learning rate 0): the run steps with
    them and saves their state, and the weights it writes are the ones it started with."""
    data = make_mask_folder(tmp_path / "data", n=6)
    parts = build_parts(configure(("test", _settings(data, tmp_path / "run"))))
    start = {k: v.detach().clone() for k, v in parts.model.named_parameters()}
    optimizer = torch.optim.SGD(parts.model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = Trainer.from_parts(dataclasses.replace(parts, optimizer=optimizer, scheduler=scheduler))
    assert trainer.model is parts.model and trainer.optimizer is optimizer
    result = trainer.fit()
    last = torch.load(result.run_dir / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["lr"] == 0.0 and last["step"] == trainer.step == 2
    assert all(torch.equal(last["model"][k], start[k]) for k in start)
    # The trainer has everything hooks may read of it.
    assert [name for name in TrainerView.__annotations__ if not hasattr(trainer, name)] == []
