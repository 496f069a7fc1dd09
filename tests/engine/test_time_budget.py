"""Training-time budgets: repeated passes per epoch, ``train.time_limit``, and a schedule fitted to the limit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from segtune.data.samplers import RepeatSampler
from segtune.engine import configure
from segtune.engine import budget as budget_module
from segtune.engine.budget import Stopwatch
from segtune.engine.trainer import Trainer
from tests.conftest import FakeClock, make_mask_folder


class SleepyDetector(nn.Module):
    """Takes ``seconds`` of the fake training clock per training call and returns losses; in evaluation it
    detects nothing. No real sleep: the run's timing is the same on any machine."""

    def __init__(self, seconds: float, clock: FakeClock | None = None) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.seconds, self.clock = seconds, clock

    def forward(self, images, targets=None):
        if not self.training:
            return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                     "scores": torch.zeros(0), "masks": torch.zeros(0, 1, *img.shape[-2:])} for img in images]
        if self.seconds:
            self.clock.advance(self.seconds)
        loss = (self.w * torch.stack([img.mean() for img in images]).mean()).sum()
        return {"loss_a": loss}


@pytest.fixture
def clock(fake_training_clock) -> FakeClock:
    """The training clock and the progress lines' clock, moved only by :class:`SleepyDetector`."""
    return fake_training_clock(0.0, progress=True)


@pytest.fixture
def budget_run(tmp_path: Path, clock: FakeClock):
    data = make_mask_folder(tmp_path / "data", n=6)

    def run(seconds: float, hooks=(), **extra) -> Trainer:
        cfg = configure(("test", {"data.path": str(data), "train.out": str(tmp_path / "run"), "train.epochs": 50,
                                  "train.batch_size": 1, "data.test_size": 2, "train.lr": 0.1,
                                  "train.warmup_iters": 0, "train.tensorboard": False, "train.print_freq": 100,
                                  "model.weights": "none", "model.weights_backbone": "none", "train.augment": [],
                                  **extra}))
        trainer = Trainer(cfg, hooks, model=SleepyDetector(seconds, clock))
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
    trainer = budget_run(0.0, **{"train.epochs": 1, "train.repeat": 3})
    assert trainer.iters == 3 * 4 and trainer.step == 12  # 4 training images, batch 1, three passes


# The fake clock moves only inside the model's training calls (SleepyDetector), so the training time after
# k steps of s seconds is exactly k * s: the step times below are binary fractions (1/16, 1/32 s), exact in
# floating point. Expected numbers are worked out by hand in the comments.


def test_time_limit_stops_mid_epoch_evaluates_and_saves(budget_run, tmp_path: Path) -> None:
    trainer = budget_run(1 / 16, **{"train.time_limit": 0.5 / 60, "train.repeat": 20})
    # 0.5 s limit / (1/16 s per step) = 8 steps; the epoch has 4 images x 20 passes = 80 iterations.
    assert trainer.iters == 80 and trainer.step == 8
    assert len(trainer.history) == 1  # stopped inside epoch 0, which is recorded
    record = trainer.history[0]
    assert record["train_time_s"] == 0.5  # 8 x 1/16 s: the limit exactly, not a step more
    assert "metrics" in record  # the part-epoch was evaluated
    state = torch.load(tmp_path / "run" / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert state["train_time_s"] == 0.5 and state["step"] == 8


def test_fit_to_time_limit_sizes_the_cosine_schedule(budget_run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget_module, "CALIBRATE_STEPS", (2, 6))
    trainer = budget_run(1 / 16, **{"train.time_limit": 1.5 / 60, "train.fit_to_time_limit": True,
                                    "train.schedule": "cosine", "train.repeat": 3})
    # Every step takes 1/16 s, so 1.5 s hold 24 steps; an epoch is 4 images x 3 passes = 12 steps: 2 epochs.
    assert trainer.iters == 12 and trainer.max_steps == 24
    assert trainer.scheduler.lr_lambdas[0].total_iters == 24
    # The fitted length is the run's state; the config keeps the epochs given (an upper bound).
    assert trainer.run.epochs == 2 and trainer.cfg.train.epochs == 50
    assert trainer.run.max_steps == 24
    assert trainer.step == 24 and [r["epoch"] for r in trainer.history] == [0, 1]
    assert trainer.history[-1]["train_time_s"] == 1.5  # 24 x 1/16 s
    # Ended by the fitted schedule: the cosine rate has come down to 0.
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_the_progress_eta_counts_to_the_fitted_end_not_the_epoch_end(
        budget_run, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import re

    monkeypatch.setattr(budget_module, "CALIBRATE_STEPS", (2, 6))
    with caplog.at_level(logging.INFO, logger="segtune.train"):
        trainer = budget_run(1 / 32, **{"train.time_limit": 2.0 / 60, "train.fit_to_time_limit": True,
                                        "train.repeat": 100, "train.print_freq": 5})
    # 2 s / (1/32 s per step) = 64 steps of the epoch's 400 (4 images x 100 passes).
    assert trainer.iters == 400 and trainer.max_steps == 64 and trainer.step == 64
    etas = [sum(int(p) * f for p, f in zip(m.group(1).split(":"), (3600, 60, 1)))
            for m in re.finditer(r"eta: (\d+:\d\d:\d\d)", caplog.text)]
    # A line every 5 iterations up to 64: 12 lines at least. The whole epoch would read 400 x 1/32 s =
    # 12.5 s (0:00:12 at iteration 5); the time limit and the fitted end say at most 2 s, and at
    # iteration 60 the 4 steps left take 4/32 s, which reads 0:00:00.
    assert len(etas) >= 12 and max(etas) <= 2 and etas[11] == 0
    assert etas == sorted(etas, reverse=True)


def test_a_resumed_run_keeps_the_fitted_schedule(budget_run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from segtune.engine.hooks import CallbackHook

    monkeypatch.setattr(budget_module, "CALIBRATE_STEPS", (1, 3))
    settings = {"train.time_limit": 2.0 / 60, "train.fit_to_time_limit": True, "train.schedule": "cosine",
                "train.repeat": 10}
    stop = CallbackHook({"after_step": lambda trainer, step, losses: setattr(trainer, "stop_training", step >= 4)})
    first = budget_run(1 / 32, hooks=[stop], **settings)
    # 2 s / (1/32 s per step) = 64 steps, fitted at step 3; stopped by the hook at step 4 (4/32 s).
    assert first.step == 4 and first.max_steps == 64 and not first.history  # stopped inside epoch 0
    state = torch.load(tmp_path / "run" / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert state["run"]["max_steps"] == 64 and state["train_time_s"] == 0.125
    assert state["run"]["epochs"] == 2  # 64 steps over epochs of 4 images x 10 passes = 40
    resumed = budget_run(1 / 32, **settings, **{"train.resume": str(tmp_path / "run")})
    assert resumed.run.epochs == 2
    assert resumed.max_steps == 64  # not timed again: the schedule's length stays
    assert resumed.scheduler.lr_lambdas[0].total_iters == 64
    # Steps 5-64 on top of the 4 done: 64 x 1/32 s = 2 s of training in all.
    assert resumed.step == 64 and resumed.history[-1]["train_time_s"] == 2.0


def test_fit_to_time_limit_needs_a_limit(tmp_path: Path) -> None:
    from segtune.errors import ConfigError

    with pytest.raises(ConfigError, match="fit_to_time_limit needs train.time_limit"):
        configure(("test", {"train.fit_to_time_limit": True}))


def test_stopwatch_pauses(fake_training_clock) -> None:
    clock = fake_training_clock(0.0)
    watch = Stopwatch()
    watch.start()
    clock.advance(2.0)
    assert watch.elapsed == 2.0
    with watch.paused():
        clock.advance(5.0)  # not counted
        assert watch.elapsed == 2.0
    clock.advance(0.5)
    watch.stop()
    clock.advance(7.0)  # stopped: not counted
    assert watch.elapsed == 2.5
    assert Stopwatch(elapsed=1.0).elapsed == 1.0  # a resumed run's seconds, before it starts
