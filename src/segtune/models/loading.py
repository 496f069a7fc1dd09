"""Owns the one rule for loading whole-detector weights into a model built for the user's classes.

The rule, the same for every registered model and every source (a torchvision entry, a state dict,
a segtune checkpoint):

* every tensor of the model must come from the file with the same shape, except
* the class-specific output layers (each model's :class:`HeadKeys` ``predictors``): where their shape
  differs (other classes, keypoints, or predictor width) they keep their new initialisation;
* heads one two-stage detector has and another lacks (``optional``): a head the file lacks starts new
  (a Faster R-CNN file into a Mask R-CNN), a head the model lacks is unused (Mask R-CNN into Faster R-CNN).

Anything else that does not fit is a :class:`~segtune.errors.WeightsError` naming the keys; what starts
new or goes unused is logged. Written by hand: ``load_state_dict(strict=False)`` alone would accept
any mismatch silently, and strict loading refuses the class-count change every fine-tune makes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from segtune.errors import WeightsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadKeys:
    """State-dict key prefixes of a model's heads, declared beside each registered model.

    Attributes:
        predictors: tensors whose shape follows the classes (or keypoints, or predictor width).
        optional: heads the model may have that another detector of its kind lacks.
    """

    predictors: tuple[str, ...]
    optional: tuple[str, ...] = ()


#: Faster / Mask / Keypoint R-CNN, on any backbone.
RCNN_HEADS = HeadKeys(
    predictors=("roi_heads.box_predictor.", "roi_heads.mask_predictor.", "roi_heads.keypoint_predictor."),
    optional=("roi_heads.mask_head.", "roi_heads.mask_predictor.",
              "roi_heads.keypoint_head.", "roi_heads.keypoint_predictor."),
)
#: RetinaNet and FCOS: only the classification logits follow the classes (box regression is class-agnostic).
DENSE_HEADS = HeadKeys(predictors=("head.classification_head.cls_logits.",))


def _heads_of(keys: list[str]) -> str:
    return ", ".join(sorted({".".join(k.split(".")[:2]) for k in keys}))


def load_detector_state(model: nn.Module, state: dict[str, torch.Tensor], heads: HeadKeys, *, source: str,
                        model_name: str) -> list[str]:
    """Load ``state`` into ``model`` by the rule above; return the keys that kept their new initialisation.

    Raises:
        WeightsError: the file does not fit ``model``; the message names ``source`` and keys.
    """
    own = model.state_dict()
    resized = [k for k, v in state.items() if k.startswith(heads.predictors) and k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in state.items() if k not in resized}
    try:
        missing, unexpected = model.load_state_dict(usable, strict=False)
    except RuntimeError as e:  # a shape mismatch outside the predictors
        raise WeightsError(f"{source}: does not fit {model_name} ({str(e).splitlines()[-1].strip()})") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    bad_missing = [k for k in missing if not k.startswith(heads.predictors + heads.optional)]
    bad_unexpected = [k for k in unexpected if not k.startswith(heads.optional)]
    if bad_missing or bad_unexpected:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", bad_missing), ("unexpected", bad_unexpected)) if keys)
        raise WeightsError(f"{source}: does not fit {model_name} ({detail})")
    new = sorted(set(missing) | set(resized))
    if new:
        logger.info("%s: %d tensors start new (not in %s, or sized for other classes): %s", model_name, len(new),
                    source, _heads_of(new))
    if unexpected:
        logger.info("%s: %d tensors of %s unused (%s)", model_name, len(unexpected), source, _heads_of(unexpected))
    return new
