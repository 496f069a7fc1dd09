"""The loop itself, on a stub detector: non-finite losses stop it with the terms named; clipping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from segtune.engine.optim import build_optimizer, build_scheduler
from segtune.engine.trainer import train_one_epoch
from segtune.errors import TrainingError


class StubDetector(nn.Module):
    """Takes (images, targets) like a torchvision detector and returns a dict of losses."""

    def __init__(self, bad_call: int | None = None, scale: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.calls = 0
        self.bad_call, self.scale = bad_call, scale

    def forward(self, images, targets):
        self.calls += 1
        loss = self.scale * (self.w * torch.stack([img.mean() for img in images]).mean()).sum()
        if self.calls == self.bad_call:
            loss = loss * float("nan")
        return {"loss_a": loss, "loss_b": loss.detach() * 0 + self.w.sum() * 0.1}


def loader(n: int = 6):
    return [((torch.ones(3, 4, 4), torch.ones(3, 4, 4)), ({"boxes": torch.zeros(0, 4)}, {"boxes": torch.zeros(0, 4)}))
            for _ in range(n)]


def run(model: nn.Module, iters: int, **kwargs):
    opt = build_optimizer(model, lr=0.1, momentum=0.0, weight_decay=0.0)
    sched = build_scheduler(opt, iters_per_epoch=iters, warmup_iters=0, warmup_factor=1.0, lr_step=3, lr_gamma=0.1)
    return train_one_epoch(model, opt, sched, loader(), epoch=0, iters=iters, step=0, device=torch.device("cpu"),
                           print_freq=1, **kwargs)


def test_epoch_averages_losses_and_counts_steps() -> None:
    losses, step = run(StubDetector(), iters=4)
    assert step == 4 and losses["iters"] == 4
    assert {"loss", "loss_a", "loss_b", "time_s", "s_per_iter"} <= set(losses)
    assert math.isfinite(losses["loss"])


def test_non_finite_loss_names_iteration_and_terms() -> None:
    model = StubDetector(bad_call=3)
    with pytest.raises(TrainingError) as info:
        run(model, iters=5)
    message = str(info.value)
    assert "iteration 3" in message and "loss_a=nan" in message and "loss_b=" in message
    assert torch.isfinite(model.w).all()  # the bad step was never applied


def test_gradient_clipping_bounds_the_step() -> None:
    free, clipped = StubDetector(scale=1000.0), StubDetector(scale=1000.0)
    run(free, iters=1)
    run(clipped, iters=1, clip_grad_norm=1.0)
    moved_free = (free.w.detach() - 1).norm().item()
    moved_clipped = (clipped.w.detach() - 1).norm().item()
    assert moved_free > 10 and moved_clipped == pytest.approx(0.1, rel=1e-3)  # lr 0.1 x norm 1
