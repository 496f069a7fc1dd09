"""The tutorial schedule: linear warm-up over the first epoch, then StepLR(3, 0.1) by epoch."""

from __future__ import annotations

import pytest
import torch

from segtune.engine.optim import build_optimizer, build_scheduler


def lrs(iters_per_epoch: int, epochs: int, **kwargs) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, lr=0.005, momentum=0.9, weight_decay=5e-4)
    sched = build_scheduler(opt, iters_per_epoch=iters_per_epoch, warmup_factor=0.001, lr_step=3, lr_gamma=0.1,
                            **kwargs)
    out = []
    for _ in range(iters_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_step_decay() -> None:
    ipe = 60
    values = lrs(ipe, 10, warmup_iters=None)
    assert values[0] == pytest.approx(0.005 * 0.001)
    assert values[ipe - 1] == pytest.approx(0.005)  # warm-up is min(1000, ipe - 1) iterations
    assert values[ipe] == pytest.approx(0.005)
    assert values[3 * ipe - 1] == pytest.approx(0.005) and values[3 * ipe] == pytest.approx(0.0005)
    assert values[6 * ipe] == pytest.approx(0.00005) and values[9 * ipe] == pytest.approx(0.000005)
    assert all(a <= b for a, b in zip(values[: ipe - 1], values[1:ipe]))


def test_scheduler_state_is_plain_and_restores() -> None:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=0.0)
    sched = build_scheduler(opt, iters_per_epoch=5, warmup_iters=3, warmup_factor=0.1, lr_step=1, lr_gamma=0.5)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)
    opt2 = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=0.0)
    sched2 = build_scheduler(opt2, iters_per_epoch=5, warmup_iters=3, warmup_factor=0.1, lr_step=1, lr_gamma=0.5)
    sched2.load_state_dict(restored)
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
