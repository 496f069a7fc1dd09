"""The loop itself, on a stub detector handed to ``train``: non-finite losses stop it with the terms named;
clipping; a stop inside an epoch; the best epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from segtune.engine import configure, train
from segtune.engine.checkpoints import best_index
from segtune.engine.hooks import CallbackHook
from segtune.errors import TrainingError
from tests.conftest import make_mask_folder


class StubDetector(nn.Module):
    """Takes (images, targets) like a torchvision detector in training and returns a dict of losses."""

    def __init__(self, bad_call: int | None = None, scale: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.calls = 0
        self.bad_call, self.scale = bad_call, scale

    def forward(self, images, targets=None):
        self.calls += 1
        loss = self.scale * (self.w * torch.stack([img.mean() for img in images]).mean()).sum()
        if self.calls == self.bad_call:
            loss = loss * float("nan")
        return {"loss_a": loss, "loss_b": loss.detach() * 0 + self.w.sum() * 0.1}


@pytest.fixture
def stub_run(tmp_path: Path):
    """Train ``model`` with the real trainer on a tiny mask folder: SGD lr 0.1, no momentum, no warm-up."""
    data = make_mask_folder(tmp_path / "data", n=6)

    def run(model: nn.Module, hooks=(), **extra):
        cfg = configure(("test", {"data.path": str(data), "train.out": str(tmp_path / "run"), "train.epochs": 1,
                                  "train.batch_size": 1, "data.test_size": 2, "train.lr": 0.1, "train.momentum": 0.0,
                                  "train.weight_decay": 0.0, "train.warmup_iters": 0, "train.tensorboard": False,
                                  "train.print_freq": 1, "model.weights": "none", "model.weights_backbone": "none",
                                  "train.augment": [], **extra}))
        return train(cfg, hooks=hooks, model=model)

    return run


def _stop_after(n: int) -> CallbackHook:
    return CallbackHook({"after_step": lambda trainer, step, losses: setattr(trainer, "stop_training", step >= n)})


def test_non_finite_loss_names_iteration_and_terms(stub_run, tmp_path: Path) -> None:
    model = StubDetector(bad_call=3)
    with pytest.raises(TrainingError) as info:
        stub_run(model)
    message = str(info.value)
    assert "iteration 3" in message and "loss_a=nan" in message and "loss_b=" in message
    assert "no epoch finished, so no checkpoint was written" in message
    assert torch.isfinite(model.w).all()  # the bad step was never applied
    assert not (tmp_path / "run" / "weights" / "last.pt").exists()


def test_gradient_clipping_bounds_the_step(stub_run) -> None:
    free, clipped = StubDetector(scale=1000.0), StubDetector(scale=1000.0)
    stub_run(free, hooks=[_stop_after(1)])
    stub_run(clipped, hooks=[_stop_after(1)], **{"train.clip_grad_norm": 1.0})
    moved_free = (free.w.detach() - 1).norm().item()
    moved_clipped = (clipped.w.detach() - 1).norm().item()
    assert moved_free > 10 and moved_clipped == pytest.approx(0.1, rel=1e-3)  # lr 0.1 x norm 1


def test_a_hook_stop_mid_epoch_keeps_the_exact_position(stub_run, tmp_path: Path) -> None:
    stub_run(StubDetector(), hooks=[_stop_after(2)])
    state = torch.load(tmp_path / "run" / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["iteration"], state["step"]) == (0, 2, 2)
    assert {"optimizer", "scheduler", "scaler", "rng", "history"} <= set(state)


def test_best_epoch_breaks_ties_below_1e4_by_bbox_ap() -> None:
    def record(segm: float, bbox: float) -> dict:
        return {"metrics": {"bbox": {"AP": bbox}, "segm": {"AP": segm}}}

    assert best_index([record(0.00002, 0.002), record(0.00001, 0.036)]) == 1  # both segm AP "0.0000"
    assert best_index([record(0.30, 0.40), record(0.25, 0.50)]) == 0
    assert best_index([record(0.1, 0.2), record(0.1, 0.2)]) == 1  # a full tie: the later epoch
    assert best_index([record(0.30, 0.40), record(0.25, 0.50)], "bbox/AP") == 1
