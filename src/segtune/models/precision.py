"""Owns the number formats a model runs in: the autocast dtype ``--amp`` resolves to, channels-last
weights, and the two hooks that keep a detector right under autocast (boxes in float32, keypoint
heat-maps contiguous). Training (``engine/amp.py``), evaluation and prediction share them.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from segtune.errors import ConfigError
from segtune.runtime import cpu_has_native_bf16

logger = logging.getLogger("segtune")

#: ``--amp`` of ``segtune predict`` / ``evaluate``: float32, bfloat16 autocast, or bf16 where it is native.
INFERENCE_AMP = ("none", "bf16", "auto")


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


def bf16_is_slow_here(amp: str, device: torch.device) -> bool:
    """bf16 asked for on a CPU without native bfloat16 instructions, where it is slower than float32."""
    return amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16()


def refuse_amp_for_exported(path: object, amp: str) -> None:
    """An exported file runs in the number format it was exported in: ``amp`` other than none is a ConfigError."""
    if amp != "none":
        raise ConfigError(f"{path}: --amp {amp} runs a checkpoint's model under autocast; an exported file runs as "
                          "it was exported (give the checkpoint, or leave --amp out)")


def inference_precision(model: nn.Module, amp: str, device: torch.device) -> torch.dtype | None:
    """Make ``model`` ready to run under ``amp`` (none | bf16 | auto) for inference, in place; the autocast
    dtype to run it under (None: float32). With autocast the weights move to channels-last (the pair
    that is fast: channels-last alone gains little in float32), its proposals stay float32
    (:func:`keep_boxes_float32`) and keypoint heat-maps contiguous.

    Raises:
        ConfigError: ``amp`` is none of :data:`INFERENCE_AMP`.
    """
    if amp not in INFERENCE_AMP:
        raise ConfigError(f"--amp {amp!r}: choose one of {', '.join(INFERENCE_AMP)}")
    amp, why = resolve_amp(amp, device)
    if amp == "none":
        return None
    if bf16_is_slow_here(amp, device):
        logger.warning("--amp bf16: this CPU has no native bfloat16 instructions (AVX-512 BF16 or AMX), so "
                       "bf16 is slower than float32 here")
    model.to(memory_format=torch.channels_last)
    keep_boxes_float32(model)
    keep_heatmaps_contiguous(model)
    logger.info("number formats: %s autocast, channels-last weights (%s)", amp, why)
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` while inside; nothing when ``dtype`` is None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def float_outputs(outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """A detector's answers with low-precision floats (scores, masks under autocast) made float32, as
    every path answers."""
    return [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs]


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
