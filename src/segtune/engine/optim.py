"""Owns the optimiser, its parameter groups and the per-iteration learning-rate schedule.

SGD (optionally Nesterov) and AdamW; optionally no weight decay on normalisation layers and biases;
after a linear warm-up, a step, multistep or cosine schedule; and the linear scaling rule that
moves the learning rate with the total batch size.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from segtune.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "multistep", "cosine")

# Module types whose weights are scales and shifts, not filters: decaying them towards 0 only hurts.
# _NormBase covers BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm* and their lazy forms; torchvision's
# FrozenBatchNorm2d keeps its statistics in buffers and has no parameters to group.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


@dataclass
class ScheduleFactor:
    """LR factor at iteration ``it``: a linear warm-up, then a step, multistep or cosine schedule.

    One per-iteration schedule instead of torchvision's chain of schedulers (a warm-up ``LinearLR``
    plus a per-epoch ``StepLR``/``MultiStepLR``/``CosineAnnealingLR``), so that its whole state is
    one integer and resuming mid-epoch is exact. A dataclass, not a lambda, so that
    ``LambdaLR.state_dict()`` holds plain values that ``weights_only`` loading accepts.

    Step and multistep multiply the warm-up factor onto the epoch's decay (as torchvision's
    reference does in epoch 0). Cosine starts from 1 where warm-up ends and reaches 0 at
    ``total_iters``.
    """

    warmup_iters: int
    warmup_factor: float
    iters_per_epoch: int
    step_epochs: int = 3
    gamma: float = 0.1
    schedule: str = "step"
    milestones: list[int] = field(default_factory=list)
    total_iters: int = 0

    def __call__(self, it: int) -> float:
        factor = 1.0
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor = self.warmup_factor * (1 - alpha) + alpha
        if self.schedule == "cosine":
            if it < self.warmup_iters:
                return factor
            span = max(1, self.total_iters - self.warmup_iters)
            t = min(1.0, (it - self.warmup_iters) / span)
            return 0.5 * (1.0 + math.cos(math.pi * t))
        epoch = it // max(1, self.iters_per_epoch)
        if self.schedule == "multistep":
            return factor * self.gamma ** bisect.bisect_right(self.milestones, epoch)
        return factor * self.gamma ** (epoch // max(1, self.step_epochs))


def param_groups(model: nn.Module, *, weight_decay: float, no_decay_norm: bool = False) -> list[dict]:
    """The trainable parameters of ``model`` as optimiser parameter groups.

    Args:
        model: the model; parameters with ``requires_grad=False`` (frozen layers) are left out.
        weight_decay: the decay for ordinary weights.
        no_decay_norm: put the weights of normalisation layers (BatchNorm*, GroupNorm, LayerNorm,
            InstanceNorm*, RMSNorm) and every bias into a second group with ``weight_decay=0``.

    Returns:
        One group (``name="decay"``) or, with ``no_decay_norm``, up to two (``decay``, ``no_decay``);
        an empty group is left out. The order follows ``model.named_modules()``, so the same model
        gives the same groups, which ``optimizer.load_state_dict`` needs on resume.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue  # a parameter shared by two modules goes in once
            seen.add(id(param))
            exempt = no_decay_norm and (is_norm or name == "bias" or name.endswith("_bias"))
            (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module, *, name: str = "sgd", lr: float, momentum: float = 0.9, nesterov: bool = False,
    weight_decay: float, no_decay_norm: bool = False,
) -> torch.optim.Optimizer:
    """The optimiser for the trainable parameters of ``model``.

    Args:
        model: the model (unwrapped or DDP-wrapped; only trainable parameters are optimised).
        name: ``sgd`` (``torch.optim.SGD``) or ``adamw`` (``torch.optim.AdamW``, default betas).
        lr: learning rate (the schedule multiplies it per iteration).
        momentum: SGD momentum; ignored by AdamW.
        nesterov: SGD with Nesterov momentum (needs ``momentum > 0``); ignored by AdamW.
        weight_decay: weight decay (decoupled in AdamW, L2 in SGD).
        no_decay_norm: no weight decay on normalisation layers and biases; see :func:`param_groups`.

    Raises:
        ConfigError: unknown ``name``, no trainable parameter, or Nesterov without momentum.
    """
    groups = param_groups(model, weight_decay=weight_decay, no_decay_norm=no_decay_norm)
    if not groups:
        raise ConfigError(f"{type(model).__name__} has no trainable parameter (every layer is frozen)")
    if name == "sgd":
        if nesterov and momentum <= 0:
            raise ConfigError(f"train.nesterov needs train.momentum > 0 (got momentum={momentum})")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"train.optimizer '{name}' is not known; choose one of: {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, iters_per_epoch: int, schedule: str = "step", epochs: int | None = None,
    warmup_iters: int | None = None, warmup_factor: float = 0.001, lr_step: int = 3,
    lr_milestones: list[int] | tuple[int, ...] = (), lr_gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` to be stepped once per iteration (after ``optimizer.step()``).

    Args:
        optimizer: the optimiser; every group follows the same factor.
        iters_per_epoch: optimiser steps per epoch (epochs in ``lr_step``/``lr_milestones`` count these).
        schedule: after warm-up, ``step`` (x ``lr_gamma`` every ``lr_step`` epochs: the tutorial's
            StepLR), ``multistep`` (x ``lr_gamma`` at each epoch in ``lr_milestones``) or ``cosine``
            (half a cosine from the full rate down to 0 at the end of ``epochs``).
        epochs: the length of training; needed by ``cosine``.
        warmup_iters: iterations of linear warm-up; None = the first epoch, at most 1000 (the
            tutorial's rule); 0 = none.
        warmup_factor: the factor at iteration 0, rising linearly to 1 at ``warmup_iters``.
        lr_step: ``step``: epochs between decays.
        lr_milestones: ``multistep``: epochs at which the rate decays.
        lr_gamma: ``step``/``multistep``: the decay factor.

    Raises:
        ConfigError: unknown ``schedule``, or ``cosine`` without ``epochs``.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule '{schedule}' is not known; choose one of: {', '.join(SCHEDULES)}")
    if schedule == "cosine" and not epochs:
        raise ConfigError("train.schedule cosine needs the number of epochs (train.epochs > 0)")
    if schedule == "step" and lr_step < 1:
        raise ConfigError(f"train.lr_step must be at least 1 epoch (got {lr_step})")
    if warmup_iters is None:
        warmup_iters = min(1000, iters_per_epoch - 1)
    factor = ScheduleFactor(
        warmup_iters=max(0, warmup_iters), warmup_factor=warmup_factor, iters_per_epoch=iters_per_epoch,
        step_epochs=lr_step, gamma=lr_gamma, schedule=schedule, milestones=sorted(int(m) for m in lr_milestones),
        total_iters=(epochs or 0) * iters_per_epoch,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def scaled_lr(lr: float, batch_size: int, world_size: int = 1, reference_batch: int | None = None) -> float:
    """The linear scaling rule (Goyal et al., 2017): the rate grows with the total batch.

    Args:
        lr: the rate that suits a total batch of ``reference_batch`` images.
        batch_size: images per batch in each process.
        world_size: processes (each with its own batch).
        reference_batch: the total batch ``lr`` was tuned for; None = no scaling, ``lr`` is returned.

    Returns:
        ``lr * batch_size * world_size / reference_batch``.

    Raises:
        ConfigError: ``reference_batch`` is not positive.
    """
    if reference_batch is None:
        return lr
    if reference_batch <= 0:
        raise ConfigError(f"train.lr_scale_with_batch must be a positive batch size (got {reference_batch})")
    return lr * batch_size * world_size / reference_batch
