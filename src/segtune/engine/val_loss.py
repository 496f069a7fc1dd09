"""Owns the validation loss: the model's loss terms on the test split, once per epoch, as a hook.

torchvision's detectors return their losses only in training mode, so the model runs in training
mode under ``torch.no_grad``, with every BatchNorm layer held in eval mode (its running statistics
must not learn from the test images) and the random streams forked and seeded per epoch (the RPN
and RoI heads sample proposals at random; training's own random stream is left as it was, so a run
draws the same batches with or without this hook, and a resumed run the same values).

The targets are the test split's under the training rule of :class:`~segtune.data.DetectionDataset`
(a view with ``keep_crowd=False``: crowd regions, empty masks and boxes without width or height, which
evaluation keeps, are left out), with the evaluation transforms. The mean of each term over the test
images goes into the epoch record under ``val`` (``metrics.csv``: ``val/loss``, ``val/loss_mask``, ...;
``results.png`` draws it dashed beside the training loss).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from segtune.data import build_loader
from segtune.engine import distributed as dist
from segtune.engine.hooks import HOOKS, Hook, TrainerView
from segtune.models.precision import autocast

logger = logging.getLogger("segtune.train")


@contextlib.contextmanager
def loss_mode(model: nn.Module):
    """``model`` in training mode (so it returns losses) with BatchNorm layers in eval mode; restored after."""
    was_training = model.training
    model.train()
    frozen = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in frozen:
        m.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def validation_loss(model: nn.Module, dataset: Any, *, device: torch.device, batch_size: int = 1, workers: int = 0,
                    seed: int = 0, autocast: contextlib.AbstractContextManager | None = None,
                    shard: tuple[int, int] = (0, 1), gather: Any = None) -> dict[str, float]:
    """Mean loss terms (and their sum, ``loss``) of ``model`` over ``dataset``, per image.

    ``dataset`` must give targets the loss takes (a training-rule view, ``keep_crowd=False``).

    Args:
        seed: seeds the proposal sampling (forked: the caller's random state is left as it was).
        autocast: the training's autocast context, so the losses are those training sees.
        shard, gather: as in :func:`segtune.evaluation.evaluate_model` for distributed runs.
    """
    rank, world = shard
    part = dataset if world == 1 else torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
    loader = build_loader(part, batch_size=batch_size, train=False, workers=workers)
    sums: dict[str, float] = {}
    count = 0
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), loss_mode(model):
        torch.manual_seed(seed)
        for images, targets in loader:
            images = [img.to(device) for img in images]
            targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
            with autocast if autocast is not None else contextlib.nullcontext():
                losses = model(images, targets)
            n = len(images)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n  # the terms are batch means
            count += n
    if gather is not None and world > 1:
        parts = gather((sums, count))
        sums = {k: sum(s.get(k, 0.0) for s, _ in parts) for k in parts[0][0]}
        count = sum(c for _, c in parts)
    if not count:
        return {}
    means = {k: v / count for k, v in sums.items()}
    return {"loss": sum(means.values()), **means}


@HOOKS.register("val_loss")
class ValidationLoss(Hook):
    """Adds ``record["val"]``, the loss terms on the test split, to every epoch's record (see the module)."""

    name = "val_loss"

    def before_train(self, trainer: TrainerView) -> None:
        test = trainer.test_ds  # the same images and transforms, the training rule for the targets
        self.dataset = test.view(test.files, transforms=test.transforms, keep_crowd=False)

    def evaluate(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        start = time.perf_counter()
        values = validation_loss(
            trainer.model, self.dataset,
            device=trainer.device, batch_size=trainer.cfg.eval.batch_size, workers=trainer.workers,
            seed=trainer.cfg.train.seed + epoch, autocast=autocast(trainer.device, trainer.autocast_dtype),
            shard=(trainer.dist.rank, trainer.dist.world_size), gather=dist.all_gather_objects)
        if values:
            record["val"] = values
            logger.info("epoch %d validation loss %.4f (%s; %.1f s)", epoch, values["loss"],
                        ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "loss"),
                        time.perf_counter() - start)
