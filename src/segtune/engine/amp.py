"""Owns mixed precision in training: the autocast dtype, the grad scaler, box coordinates kept in float32."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from segtune.errors import ConfigError
from segtune.runtime import cpu_has_native_bf16

logger = logging.getLogger("segtune.train")


def setup_amp(amp: str, device: torch.device, model: nn.Module) -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """For ``train.amp`` (none | fp16 | bf16): the autocast dtype (None: no autocast) and the grad scaler
    (on for fp16 only); under autocast, ``model``'s boxes stay float32 (:func:`keep_boxes_float32`).

    Raises:
        ConfigError: fp16 on a device other than CUDA.
    """
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp fp16 needs a CUDA device (on CPU use bf16 or none)")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning("train.amp bf16: this CPU has no native bfloat16 instructions (AVX-512 BF16 or AMX), "
                       "so bf16 autocast is slower than float32 here; use --amp none")
    if dtype is not None:
        keep_boxes_float32(model)
    return dtype, torch.amp.GradScaler("cuda", enabled=amp == "fp16")


def _to_float32(_module: nn.Module, _inputs: Any, outputs: tuple[list[torch.Tensor], list[torch.Tensor]]) -> Any:
    objectness, deltas = outputs
    return [t.float() for t in objectness], [t.float() for t in deltas]


def keep_boxes_float32(model: nn.Module) -> RemovableHandle | None:
    """Make the RPN head of a two-stage detector answer in float32 under autocast; None if it has none.

    Under autocast the RPN head's box deltas come out in bfloat16 (or float16), torchvision decodes
    the proposals in that dtype, and ``RoIHeads.select_training_samples`` then casts the ground-truth
    boxes to the proposals' dtype. bfloat16 has 8 significant bits: between 256 and 512 px it can only
    hold every second pixel, so every ground-truth box is moved by up to a pixel, and a thin one (an
    instance cut by a crop, e.g. x 301.5-302.5) collapses to zero width; the zero-area box matches its
    own proposal with a NaN IoU and gives a NaN ``loss_box_reg``. With the head's outputs in float32,
    the proposals and the boxes stay float32; the convolutions still run in the low precision.

    Written here because torchvision has no switch for it. A forward hook, so the state dict's keys
    do not change; in float32 it changes nothing.
    """
    rpn = getattr(model, "rpn", None)
    head = getattr(rpn, "head", None)
    if head is None:
        return None
    return head.register_forward_hook(_to_float32)
