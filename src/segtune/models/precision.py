"""Owns the number formats a model runs in: the autocast dtype ``--amp`` resolves to, channels-last
weights (with the hooks the model's family needs under them). Training (``engine/amp.py``), evaluation
and prediction share them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from segtune.errors import ConfigError
from segtune.models.family import family_of
from segtune.models.fastest import fastest_amp
from segtune.machine import cpu_has_native_bf16

logger = logging.getLogger("segtune")

#: ``--amp`` of ``segtune predict`` / ``evaluate``: float32, bfloat16 autocast, or whichever of the two this
#: machine runs the model faster in, measured (:mod:`segtune.models.fastest`; the default).
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


def inference_precision(model: nn.Module, amp: str, device: torch.device) -> torch.dtype | None:
    """Make ``model`` ready to run under ``amp`` (none | bf16 | auto) for inference, in place; the autocast
    dtype to run it under (None: float32). ``auto`` is the faster of the two for this model on this machine,
    measured once and remembered (:func:`~segtune.models.fastest.fastest_amp`). With autocast the weights move to channels-last (the pair
    that is fast: channels-last alone gains little in float32) and the model's family adds the hooks it
    needs there (:meth:`~segtune.models.family.ModelFamily.precision_hooks`: an R-CNN's proposals stay
    float32, keypoint heat-maps contiguous).

    Raises:
        ConfigError: ``amp`` is none of :data:`INFERENCE_AMP`.
    """
    if amp not in INFERENCE_AMP:
        raise ConfigError(f"--amp {amp!r}: choose one of {', '.join(INFERENCE_AMP)}")
    if amp == "auto":
        low = "fp16" if device.type == "cuda" and not torch.cuda.is_bf16_supported() else "bf16"
        amp, why = fastest_amp(model, device, prepare=lambda: _low_precision_weights(model), low=low)
    else:
        why = "asked for"
    if amp == "none":
        logger.info("number formats: float32 (%s)", why)
        return None
    if bf16_is_slow_here(amp, device):
        logger.warning("--amp bf16: this CPU has no native bfloat16 instructions (AVX-512 BF16 or AMX), so "
                       "bf16 is slower than float32 here")
    _low_precision_weights(model)
    logger.info("number formats: %s autocast, channels-last weights (%s)", amp, why)
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]


def _low_precision_weights(model: nn.Module) -> Callable[[], None]:
    """Channels-last weights and the family's autocast hooks on ``model``; returns what undoes both."""
    model.to(memory_format=torch.channels_last)
    handles = family_of(model).precision_hooks(model)

    def undo() -> None:
        for handle in handles:
            handle.remove()
        model.to(memory_format=torch.contiguous_format)
    return undo


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` while inside; nothing when ``dtype`` is None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def float_outputs(outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """A detector's answers with low-precision floats (scores, masks under autocast) made float32, as
    every path answers."""
    return [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs]
