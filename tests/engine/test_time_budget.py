"""Training-time budgets: repeated passes per epoch, ``train.time_limit``, and a schedule fitted to the limit."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from segtune.data.samplers import RepeatSampler
from segtune.engine import configure
from segtune.engine import budget as budget_module
from segtune.engine.budget import Stopwatch
from segtune.engine.trainer import Trainer
from tests.conftest import make_mask_folder


class SleepyDetector(nn.Module):
    """Takes ``seconds`` per training call and returns losses; in evaluation it detects nothing."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.seconds = seconds

    def forward(self, images, targets=None):
        if not self.training:
            return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                     "scores": torch.zeros(0), "masks": torch.zeros(0, 1, *img.shape[-2:])} for img in images]
        time.sleep(self.seconds)
        loss = (self.w * torch.stack([img.mean() for img in images]).mean()).sum()
        return {"loss_a": loss}


@pytest.fixture
def budget_run(tmp_path: Path):
    data = make_mask_folder(tmp_path / "data", n=6)

    def run(model: nn.Module, hooks=(), **extra) -> Trainer:
        cfg = configure(("test", {"data.path": str(data), "train.out": str(tmp_path / "run"), "train.epochs": 50,
                                  "train.batch_size": 1, "data.test_size": 2, "train.lr": 0.1,
                                  "train.warmup_iters": 0, "train.tensorboard": False, "train.print_freq": 100,
                                  "model.weights": "none", "model.weights_backbone": "none", "train.augment": [],
                                  **extra}))
        trainer = Trainer(cfg, hooks, model=model)
        trainer.fit()
        return trainer

    return run


def test_repeat_sampler_gives_a_new_order_each_pass() -> None:
    generator = torch.Generator().manual_seed(0)
    sampler = RepeatSampler(torch.utils.data.RandomSampler(range(5), generator=generator), 3)
    order = list(sampler)
    assert len(sampler) == len(order) == 15
    passes = [order[i:i + 5] for i in range(0, 15, 5)]
    assert all(sorted(p) == list(range(5)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1


def test_repeat_sampler_reshuffles_a_distributed_sampler_per_pass() -> None:
    inner = torch.utils.data.distributed.DistributedSampler(range(8), num_replicas=2, rank=0, shuffle=True, seed=0)
    sampler = RepeatSampler(inner, 2)
    sampler.set_epoch(1)
    order = list(sampler)
    assert len(order) == len(sampler) == 8
    assert order[:4] != order[4:]  # epochs 2 and 3 of the inner sampler
    assert inner.epoch == 3


def test_an_epoch_of_repeat_passes(budget_run) -> None:
    trainer = budget_run(SleepyDetector(0.0), **{"train.epochs": 1, "train.repeat": 3})
    assert trainer.iters == 3 * 4 and trainer.step == 12  # 4 training images, batch 1, three passes


def test_time_limit_stops_mid_epoch_evaluates_and_saves(budget_run, tmp_path: Path) -> None:
    trainer = budget_run(SleepyDetector(0.05), **{"train.time_limit": 0.5 / 60, "train.repeat": 20})
    assert len(trainer.history) == 1 and trainer.step < trainer.iters  # stopped inside epoch 0
    record = trainer.history[0]
    assert 0.5 <= record["train_time_s"] < 0.5 + 0.5  # the limit, plus at most a step and the loop's overhead
    assert "metrics" in record  # the part-epoch was evaluated
    state = torch.load(tmp_path / "run" / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert state["train_time_s"] == pytest.approx(record["train_time_s"], abs=0.05)


def test_fit_to_time_limit_sizes_the_cosine_schedule(budget_run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget_module, "CALIBRATE_STEPS", (2, 6))
    trainer = budget_run(SleepyDetector(0.04), **{"train.time_limit": 1.2 / 60, "train.fit_to_time_limit": True,
                                                  "train.schedule": "cosine", "train.repeat": 3})
    steps = trainer.max_steps
    assert steps is not None and 12 <= steps <= 32  # about 1.2 s / 0.04 s, less the loop's overhead
    assert trainer.scheduler.lr_lambdas[0].total_iters == steps
    # The fitted length is the run's state; the config keeps the epochs given (an upper bound).
    assert trainer.run.epochs == math.ceil(steps / 12) and trainer.cfg.train.epochs == 50  # 4 images x 3 passes
    assert trainer.run.max_steps == steps
    assert trainer.step <= steps and len(trainer.history) <= trainer.run.epochs
    if trainer.step == steps:  # ended by the fitted schedule: the rate has come down to 0
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_the_progress_eta_counts_to_the_fitted_end_not_the_epoch_end(
        budget_run, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import re

    monkeypatch.setattr(budget_module, "CALIBRATE_STEPS", (2, 6))
    with caplog.at_level(logging.INFO, logger="segtune.train"):
        trainer = budget_run(SleepyDetector(0.02), **{"train.time_limit": 2.0 / 60, "train.fit_to_time_limit": True,
                                                      "train.repeat": 100, "train.print_freq": 5})
    assert trainer.iters == 400 and trainer.max_steps is not None and trainer.max_steps < 200
    etas = [sum(int(p) * f for p, f in zip(m.group(1).split(":"), (3600, 60, 1)))
            for m in re.finditer(r"eta: (\d+:\d\d:\d\d)", caplog.text)]
    # The whole epoch (400 x 0.02 s) would read 0:00:08; the time limit and the fitted end say at most 2 s.
    assert len(etas) >= 5 and max(etas) <= 2


def test_a_resumed_run_keeps_the_fitted_schedule(budget_run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from segtune.engine.hooks import CallbackHook

    monkeypatch.setattr(budget_module, "CALIBRATE_STEPS", (1, 3))
    settings = {"train.time_limit": 2.0 / 60, "train.fit_to_time_limit": True, "train.schedule": "cosine",
                "train.repeat": 10}
    stop = CallbackHook({"after_step": lambda trainer, step, losses: setattr(trainer, "stop_training", step >= 4)})
    first = budget_run(SleepyDetector(0.02), hooks=[stop], **settings)
    assert first.step == 4 and first.max_steps is not None and not first.history  # stopped inside epoch 0
    state = torch.load(tmp_path / "run" / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert state["run"]["max_steps"] == first.max_steps and state["train_time_s"] > 0
    resumed = budget_run(SleepyDetector(0.02), **settings, **{"train.resume": str(tmp_path / "run")})
    assert resumed.run.epochs == state["run"]["epochs"]
    assert resumed.max_steps == first.max_steps  # not timed again: the schedule's length stays
    assert resumed.scheduler.lr_lambdas[0].total_iters == first.max_steps
    assert resumed.step <= first.max_steps and resumed.history[-1]["train_time_s"] >= state["train_time_s"]


def test_fit_to_time_limit_needs_a_limit(tmp_path: Path) -> None:
    from segtune.errors import ConfigError

    with pytest.raises(ConfigError, match="fit_to_time_limit needs train.time_limit"):
        configure(("test", {"train.fit_to_time_limit": True}))


def test_stopwatch_pauses() -> None:
    clock = Stopwatch()
    clock.start()
    time.sleep(0.02)
    with clock.paused():
        time.sleep(0.05)
    clock.stop()
    assert 0.02 <= clock.elapsed < 0.05
