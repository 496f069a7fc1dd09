"""Owns the training step's number formats: the autocast dtype (``--amp``), the grad scaler, the
memory format of the weights (``--memory-format``) and box coordinates kept in float32."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from segtune.errors import ConfigError
from segtune.runtime import cpu_has_native_bf16

logger = logging.getLogger("segtune.train")


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """``train.amp`` made concrete, and why: ``auto`` is bf16 on a CPU that runs bfloat16 natively
    (AVX-512 BF16 or AMX) and on a CUDA GPU that supports it, fp16 on an older GPU, none elsewhere."""
    if amp != "auto":
        return amp, "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "--amp auto: this GPU supports bfloat16"
        return "fp16", "--amp auto: this GPU has no bfloat16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16", "--amp auto: this CPU runs bfloat16 natively (AVX-512 BF16 or AMX)"
    return "none", "--amp auto: this CPU has no native bfloat16 (AVX-512 BF16 or AMX), where bf16 is slower"


def resolve_memory_format(memory_format: str, amp: str, model: nn.Module) -> bool:
    """Whether to keep ``model``'s weights channels-last: ``auto`` does when autocast is on (the pair
    measured and validated together, see docs/training.md), and ``channels_last`` always."""
    if memory_format == "auto":
        return amp != "none"
    return memory_format == "channels_last"


def setup_amp(amp: str, device: torch.device, model: nn.Module,
              memory_format: str = "contiguous") -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """For ``train.amp`` (auto | none | fp16 | bf16): the autocast dtype (None: no autocast) and the grad
    scaler (on for fp16 only); under autocast, ``model``'s boxes stay float32 (:func:`keep_boxes_float32`).
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
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning("train.amp bf16: this CPU has no native bfloat16 instructions (AVX-512 BF16 or AMX), "
                       "so bf16 autocast is slower than float32 here; use --amp none")
    if dtype is not None:
        keep_boxes_float32(model)
    channels_last = resolve_memory_format(memory_format, amp, model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        keep_heatmaps_contiguous(model)
    if asked == "auto" or channels_last:
        logger.info("number formats: %s autocast, %s weights (%s)", "no" if dtype is None else amp,
                    "channels-last" if channels_last else "contiguous", why)
    return dtype, torch.amp.GradScaler("cuda", enabled=amp == "fp16")


def _contiguous(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return output.contiguous()


def keep_heatmaps_contiguous(model: nn.Module) -> RemovableHandle | None:
    """Make a Keypoint R-CNN's keypoint predictor answer in contiguous memory; None if it has none.

    With channels-last weights its heatmap logits come out channels-last, and torchvision's
    ``keypointrcnn_loss`` flattens them with ``.view(N * K, H * W)``, which such strides refuse
    ("view size is not compatible with input tensor's size and stride"). Written here because
    torchvision has no switch for it; a forward hook, so the state dict's keys do not change.
    """
    predictor = getattr(getattr(model, "roi_heads", None), "keypoint_predictor", None)
    if predictor is None:
        return None
    return predictor.register_forward_hook(_contiguous)


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
