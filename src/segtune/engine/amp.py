"""Owns the training step's number formats: the autocast dtype (``--amp``), the grad scaler and the
memory format of the weights (``--memory-format``); what inference shares lives in
``models/precision.py``."""

from __future__ import annotations

import logging

import torch
from torch import nn

from segtune.errors import ConfigError
from segtune.models.family import family_of
from segtune.models.precision import bf16_is_slow_here, resolve_amp

__all__ = ["resolve_amp", "resolve_memory_format", "setup_amp"]

logger = logging.getLogger("segtune.train")


def resolve_memory_format(memory_format: str, amp: str, model: nn.Module) -> bool:
    """Whether to keep ``model``'s weights channels-last: ``auto`` does when autocast is on (the pair
    measured and validated together, see docs/training.md), and ``channels_last`` always."""
    if memory_format == "auto":
        return amp != "none"
    return memory_format == "channels_last"


def setup_amp(amp: str, device: torch.device, model: nn.Module,
              memory_format: str = "contiguous") -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """For ``train.amp`` (auto | none | fp16 | bf16): the autocast dtype (None: no autocast) and the grad
    scaler (on for fp16 only); under autocast or channels-last, the hooks ``model``'s family declares
    (:meth:`~segtune.models.family.ModelFamily.precision_hooks`: an R-CNN's boxes stay float32).
    With ``memory_format`` (auto | channels_last | contiguous) saying so, ``model``'s 4-d weights move
    to channels-last in place (the parameters stay the same objects, so an optimiser built over them
    keeps working); convolutions then run channels-last from their first layer on. Logs what it chose.

    Raises:
        ConfigError: fp16 on a device other than CUDA.
    """
    asked = amp
    amp, why = resolve_amp(amp, device)
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp fp16 needs a CUDA device (on CPU use bf16 or none)")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    if bf16_is_slow_here(amp, device):
        logger.warning("train.amp bf16: this CPU has no native bfloat16 instructions (AVX-512 BF16 or AMX), "
                       "so bf16 autocast is slower than float32 here; use --amp none")
    channels_last = resolve_memory_format(memory_format, amp, model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if dtype is not None or channels_last:
        family_of(model).precision_hooks(model)
    if asked == "auto" or channels_last:
        logger.info("number formats: %s autocast, %s weights (%s)", "no" if dtype is None else amp,
                    "channels-last" if channels_last else "contiguous", why)
    return dtype, torch.amp.GradScaler("cuda", enabled=amp == "fp16")
