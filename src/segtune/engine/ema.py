"""Owns the exponential moving average of the model's weights, kept beside the model during training.

Built on ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` (PyTorch >= 2.1), so
the update is PyTorch's fused ``_foreach_lerp_``; buffers (BatchNorm statistics) are averaged too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from segtune.checkpoint import save_checkpoint
from segtune.config import TrainConfig
from segtune.engine.distributed import is_main_process, unwrap
from segtune.engine.hooks import HOOKS, Hook, TrainerView
from segtune.engine.state import TrainingState
from segtune.run_files import ema_checkpoint

# The defaults are the config's (train.ema_decay, train.ema_tau): one place to change them.
_DECAY: float = TrainConfig.ema_decay
_TAU: float | None = TrainConfig.ema_tau


class ModelEMA:
    """An exponential moving average of a model's parameters and buffers.

    After the first update the average equals the model; each later update moves it by
    ``1 - d`` towards the model: ``ema = d * ema + (1 - d) * model``. With ``tau`` set, the decay
    ramps up as ``d = decay * (1 - exp(-n / tau))`` (``n`` = updates so far), as Ultralytics and
    YOLOv5 do: a fine-tuning run of a few hundred steps would otherwise average mostly the
    starting weights (0.9998 ** 600 is 0.89). ``tau=None`` keeps ``d = decay`` throughout.

    Args:
        model: the model being trained (a DDP wrapper is unwrapped); it is deep-copied, on its device.
        decay: the decay per update, in [0, 1].
        tau: updates over which the decay ramps up; None = no ramp.

    Example::

        ema = ModelEMA(model, decay=0.9998)
        for images, targets in loader:
            ...; optimizer.step(); ema.update(model)
        evaluate(ema.module)
    """

    def __init__(self, model: nn.Module, *, decay: float = _DECAY, tau: float | None = _TAU) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1] (got {decay})")
        if tau is not None and tau <= 0:
            raise ValueError(f"EMA tau must be positive or None (got {tau})")
        self.decay, self.tau = decay, tau
        self.averaged = AveragedModel(unwrap(model), use_buffers=True)
        self.averaged.eval()
        self.averaged.requires_grad_(False)
        self.updates = 0  # mirrors averaged.n_averaged without reading it back from the GPU every step

    @property
    def module(self) -> nn.Module:
        """The averaged model, to evaluate or save (in eval mode; never trained directly)."""
        return self.averaged.module

    def decay_at(self, n: int) -> float:
        """The decay of the update made after ``n`` earlier updates."""
        if self.tau is None:
            return self.decay
        return self.decay * (1.0 - math.exp(-n / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (after ``optimizer.step()``) into the average."""
        model = unwrap(model)
        # get_ema_multi_avg_fn fixes its decay in a closure; a fresh one per update gives the ramp
        # while the averaging itself stays PyTorch's.
        self.averaged.multi_avg_fn = get_ema_multi_avg_fn(self.decay_at(self.updates))
        self.averaged.update_parameters(model)
        self.updates += 1
        # Integer buffers are counters (BatchNorm's num_batches_tracked), not values to average:
        # follow the model.
        for ema_buf, buf in zip(self.module.buffers(), model.buffers()):
            if not (ema_buf.is_floating_point() or ema_buf.is_complex()):
                ema_buf.copy_(buf)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (``weights_only``-loadable): ``module`` (the averaged model's
        state_dict, loadable into the bare model), ``updates``, ``decay`` and ``tau``."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the average and its update count (for resume); ``decay`` and ``tau`` stay as constructed."""
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.averaged.n_averaged.fill_(self.updates)


@HOOKS.register("ema")
class EMAHook(Hook):
    """``train.ema``: keeps a :class:`ModelEMA` of the model, updated after every optimiser step,
    evaluated beside the model (``record["ema"]``) and saved as ``weights/ema.pt``; its average is
    kept in ``last.pt`` for resume."""

    name = "ema"

    @classmethod
    def from_trainer(cls, trainer: TrainerView) -> EMAHook:
        train = trainer.cfg.train
        return cls(trainer.model, decay=train.ema_decay, tau=train.ema_tau or None)

    def __init__(self, model: nn.Module, *, decay: float = _DECAY, tau: float | None = _TAU) -> None:
        self.ema = ModelEMA(model, decay=decay, tau=tau)

    def state_dict(self) -> dict[str, Any]:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state)

    def after_step(self, trainer: TrainerView, step: int, losses: dict[str, float]) -> None:
        self.ema.update(trainer.model)

    def evaluate(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        record["ema"] = trainer.hooks.get("evaluation").score(trainer, self.ema.module).metrics

    def after_epoch(self, trainer: TrainerView, epoch: int, record: dict[str, Any]) -> None:
        if is_main_process():  # the average is updated on every rank, written by one
            save_checkpoint(ema_checkpoint(trainer.run_dir),
                            {**TrainingState(trainer).checkpoint(), "model": self.ema.module.state_dict(),
                             "metrics": record["ema"]})
