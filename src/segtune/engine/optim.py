"""Owns the optimiser and the learning-rate schedule of the tutorial recipe."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class WarmupStepFactor:
    """LR factor at iteration ``it``: linear warm-up, then StepLR-style decay every ``step_epochs`` epochs.

    One per-iteration schedule instead of torchvision's two schedulers (a warm-up ``LinearLR`` in
    epoch 0 plus a per-epoch ``StepLR``), so that its whole state is one integer. A dataclass, not a
    lambda, so ``LambdaLR.state_dict()`` holds plain values that ``weights_only`` loading accepts.
    """

    warmup_iters: int
    warmup_factor: float
    iters_per_epoch: int
    step_epochs: int
    gamma: float

    def __call__(self, it: int) -> float:
        factor = 1.0
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor = self.warmup_factor * (1 - alpha) + alpha
        epoch = it // max(1, self.iters_per_epoch)
        return factor * self.gamma ** (epoch // self.step_epochs)


def build_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, iters_per_epoch: int, warmup_iters: int | None, warmup_factor: float,
    lr_step: int, lr_gamma: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``warmup_iters=None`` warms up over the first epoch, at most 1000 iterations (the tutorial's rule)."""
    if warmup_iters is None:
        warmup_iters = min(1000, iters_per_epoch - 1)
    factor = WarmupStepFactor(max(0, warmup_iters), warmup_factor, iters_per_epoch, lr_step, lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
