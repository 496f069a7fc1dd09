"""Optimisers and schedules: the tutorial's warm-up + StepLR, multistep, cosine, parameter groups, scaling."""

from __future__ import annotations

import io
import math

import pytest
import torch

from segtune.engine.optim import build_optimizer, build_scheduler, scaled_lr
from segtune.errors import ConfigError


def lrs(iters_per_epoch: int, n_epochs: int, **kwargs) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, lr=0.005, momentum=0.9, weight_decay=5e-4)
    sched = build_scheduler(opt, iters_per_epoch=iters_per_epoch, warmup_factor=0.001, lr_step=3, lr_gamma=0.1,
                            **kwargs)
    out = []
    for _ in range(iters_per_epoch * n_epochs):
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


class _Net(torch.nn.Module):
    """A conv, a BatchNorm, a GroupNorm, a frozen layer and a layer shared by two names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.gn = torch.nn.GroupNorm(2, 4)
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.head = torch.nn.Linear(4, 2)
        self.alias = self.head


def _names(model: torch.nn.Module, params: list) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_no_decay_norm_groups_norm_weights_and_biases() -> None:
    model = _Net()
    opt = build_optimizer(model, lr=0.01, weight_decay=1e-4, no_decay_norm=True)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert _names(model, decay["params"]) == {"conv.weight", "head.weight"}
    assert _names(model, no_decay["params"]) == {"bn.weight", "bn.bias", "gn.weight", "gn.bias", "head.bias"}
    assert len(decay["params"]) + len(no_decay["params"]) == 7  # frozen layer out, shared head once

    # The exempt weights really are not decayed: with zero gradients only decay moves a weight.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["bn.weight"], before["bn.weight"]) and torch.equal(after["head.bias"], before["head.bias"])
    assert not torch.equal(after["conv.weight"], before["conv.weight"])

    plain = build_optimizer(model, lr=0.01, weight_decay=1e-4)
    assert len(plain.param_groups) == 1 and len(plain.param_groups[0]["params"]) == 7


def test_sgd_nesterov_and_adamw() -> None:
    model = _Net()
    sgd = build_optimizer(model, name="sgd", lr=0.02, momentum=0.8, nesterov=True, weight_decay=0.0)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["nesterov"] is True and sgd.param_groups[0]["momentum"] == 0.8
    adamw = build_optimizer(model, name="adamw", lr=1e-4, weight_decay=0.05, no_decay_norm=True)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    assert adamw.param_groups[0]["lr"] == 1e-4


def test_optimizer_errors_name_the_setting() -> None:
    model = _Net()
    with pytest.raises(ConfigError, match="train.optimizer 'adam' .*sgd, adamw"):
        build_optimizer(model, name="adam", lr=0.01, weight_decay=0.0)
    with pytest.raises(ConfigError, match="nesterov"):
        build_optimizer(model, lr=0.01, momentum=0.0, nesterov=True, weight_decay=0.0)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameter"):
        build_optimizer(frozen, lr=0.01, weight_decay=0.0)


def test_multistep_decays_at_epoch_milestones() -> None:
    ipe = 4
    values = lrs(ipe, 7, warmup_iters=2, schedule="multistep", lr_milestones=[5, 2])
    assert values[0] == pytest.approx(0.005 * 0.001)
    assert values[2 * ipe - 1] == pytest.approx(0.005)
    assert values[2 * ipe] == pytest.approx(0.0005) and values[5 * ipe - 1] == pytest.approx(0.0005)
    assert values[5 * ipe] == pytest.approx(0.00005) and values[-1] == pytest.approx(0.00005)


def test_cosine_warms_up_then_decays_to_zero() -> None:
    ipe, epochs, warm = 10, 3, 5
    values = lrs(ipe, epochs, warmup_iters=warm, schedule="cosine", epochs=epochs)
    assert values[0] == pytest.approx(0.005 * 0.001)
    assert values[warm] == pytest.approx(0.005)  # full rate where warm-up ends
    total = ipe * epochs
    mid = warm + (total - warm) // 2
    assert values[mid] == pytest.approx(0.005 * 0.5 * (1 + math.cos(math.pi * (mid - warm) / (total - warm))))
    assert all(a > b for a, b in zip(values[warm:-1], values[warm + 1:]))
    assert 0 < values[-1] < 0.005 * 0.01
    with pytest.raises(ConfigError, match="cosine needs the number of epochs"):
        build_scheduler(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1), iters_per_epoch=3,
                        schedule="cosine")
    with pytest.raises(ConfigError, match="step, multistep, cosine"):
        build_scheduler(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1), iters_per_epoch=3,
                        schedule="poly")


@pytest.mark.parametrize("schedule", ["step", "multistep", "cosine"])
def test_resume_mid_epoch_continues_the_same_rates(schedule: str) -> None:
    kwargs = dict(iters_per_epoch=4, schedule=schedule, epochs=5, warmup_iters=3, warmup_factor=0.1, lr_step=2,
                  lr_milestones=[1, 3], lr_gamma=0.5)

    def run(steps: int, state: dict | None = None) -> tuple[list[float], dict]:
        model = torch.nn.Linear(2, 2)
        opt = build_optimizer(model, lr=0.01, weight_decay=0.0)
        sched = build_scheduler(opt, **kwargs)
        if state is not None:  # as a resume does: the optimiser holds the current rate, the schedule its step
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}

    straight, _ = run(20)
    first, state = run(7)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    second, _ = run(13, torch.load(buf, weights_only=True))
    assert first + second == pytest.approx(straight)


def test_scaled_lr_is_the_linear_rule() -> None:
    assert scaled_lr(0.02, 2, 4, 16) == pytest.approx(0.01)  # 8 images where 16 were meant: half the rate
    assert scaled_lr(0.02, 8, 4, 16) == pytest.approx(0.04)
    assert scaled_lr(0.02, 8, 4, None) == 0.02
    with pytest.raises(ConfigError, match="lr_scale_with_batch"):
        scaled_lr(0.02, 2, 1, 0)
