"""Owns head transfer from COCO classes: which pretrained class rows start which of the user's classes, and the copy.

``--init-head-from-coco person`` makes a fine-tune start from the pretrained model's own person
detector instead of a randomly initialised classifier: the new heads are built for the user's
classes as usual, then the rows (or output channels) that belong to the named COCO classes are
copied into them from the pretrained state dict. Everything a class row does not cover keeps its
fresh initialisation.

Head layouts copied (torchvision 0.21 .. 0.29):

- Fast R-CNN ``roi_heads.box_predictor.cls_score``: ``Linear(in, C)``, one row per class, background at 0.
- Fast R-CNN ``roi_heads.box_predictor.bbox_pred``: ``Linear(in, 4 C)``, the 4 rows ``4c .. 4c+3`` per class.
- Mask R-CNN ``roi_heads.mask_predictor.mask_fcn_logits``: ``Conv2d(hidden, C, 1)``, one output channel
  per class (copied only when ``hidden`` matches the source's).
- RetinaNet / FCOS ``head.classification_head.cls_logits``: ``Conv2d(in, A C, 3)`` whose output is viewed
  as ``[N, A, C, H, W]`` (``RetinaNetClassificationHead.forward``), so class ``c`` of anchor ``a`` is
  channel ``a C + c``. These heads are sigmoid (focal loss) classifiers with no background class:
  torchvision trains them with the 1-based labels as channel indices and channel 0 never positive,
  so channel 0 is not copied.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from segtune.errors import ConfigError, WeightsError

logger = logging.getLogger(__name__)

#: Names in torchvision's category lists that are no class: the background entry sits at index 0
#: (``__background__``, or ``no person`` for Keypoint R-CNN) and ``N/A`` fills unused COCO ids.
_PLACEHOLDERS = ("N/A",)

_FLAG = "model.init_head_from_coco"


def _valid_coco_names(coco_categories: Sequence[str]) -> dict[str, int]:
    """Lower-cased COCO class name -> index in ``coco_categories`` (background and ``N/A`` left out)."""
    return {name.lower(): i for i, name in enumerate(coco_categories) if i > 0 and name not in _PLACEHOLDERS}


def _close(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name.lower(), list(valid), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def parse_coco_mapping(spec: str, classes: list[str], coco_categories: list[str]) -> list[int]:
    """Turn ``--init-head-from-coco`` into the source row of each label.

    Args:
        spec: ``person`` (the data set has one class, which starts from COCO's ``person``), or
            ``ours=coco`` pairs separated by commas (``pedestrian=person,bike=bicycle``). A bare name
            in a list of several (``person,car``) maps our class of that name to the COCO class of the
            same name. Names are matched without regard to case.
        classes: the data set's class names, background excluded (label ``i`` is ``classes[i - 1]``).
        coco_categories: the pretrained weights' category list, background at index 0 (torchvision's
            ``weights.meta["categories"]``, with its ``N/A`` placeholders).

    Returns:
        ``head_rows`` of length ``len(classes) + 1``: ``head_rows[0] = 0`` (background from
        background), ``head_rows[label]`` = index into ``coco_categories``, or -1 for a class that
        is not named and keeps its random initialisation.

    Raises:
        ConfigError: an unknown COCO or data-set class name (with close matches), a class named
            twice, or a bare name when the data set has several classes.
    """
    valid = _valid_coco_names(coco_categories)
    ours = {name.lower(): label for label, name in enumerate(classes, 1)}
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"{_FLAG}: empty; write a COCO class name ('person') or pairs 'ours=coco,...'")
    head_rows = [0] + [-1] * len(classes)
    for item in items:
        if "=" in item:
            our_name, _, coco_name = (part.strip() for part in item.partition("="))
        elif len(items) == 1 and len(classes) == 1:
            our_name, coco_name = classes[0], item
        elif item.lower() in ours:
            our_name, coco_name = item, item
        else:
            raise ConfigError(
                f"{_FLAG}: '{item}' does not say which class it starts; the data set has {len(classes)} classes "
                f"({', '.join(classes)}): write pairs such as '{classes[0]}={item}'"
            )
        label = ours.get(our_name.lower())
        if label is None:
            raise ConfigError(f"{_FLAG}: '{our_name}' is not a class of the data set (classes: {', '.join(classes)})"
                              + _close(our_name, list(ours)))
        index = valid.get(coco_name.lower())
        if index is None:
            hint = _close(coco_name, list(valid)) or f"; its classes are: {', '.join(valid)}"
            raise ConfigError(f"{_FLAG}: '{coco_name}' is not a class of the pretrained weights" + hint)
        if head_rows[label] != -1:
            raise ConfigError(f"{_FLAG}: class '{classes[label - 1]}' is named twice")
        head_rows[label] = index
    return head_rows


@dataclass(frozen=True)
class _Head:
    """A class-indexed layer: its module path and how its output channels are laid out."""

    module: str
    block: int  # output channels per class (4 for box regression, 1 otherwise)
    per_anchor: bool  # channels are anchor-major: A blocks of C classes (RetinaNet, FCOS)
    has_background: bool  # whether label 0 is a trained background class (copy it too)


_HEADS = (
    _Head("roi_heads.box_predictor.cls_score", 1, False, True),
    _Head("roi_heads.box_predictor.bbox_pred", 4, False, True),
    _Head("roi_heads.mask_predictor.mask_fcn_logits", 1, False, True),
    _Head("head.classification_head.cls_logits", 1, True, False),
)


def _num_anchors(model: nn.Module) -> int:
    return int(model.get_submodule("head.classification_head").num_anchors)


def _channel_map(head: _Head, head_rows: list[int], num_anchors: int, target_classes: int,
                 source_classes: int) -> tuple[list[int], list[int]]:
    """Target and source output-channel indices to copy for ``head``."""
    dst, src = [], []
    anchors = num_anchors if head.per_anchor else 1
    for label, row in enumerate(head_rows):
        if row < 0 or (label == 0 and not head.has_background):
            continue
        for a in range(anchors):
            for j in range(head.block):
                dst.append((a * target_classes + label) * head.block + j)
                src.append((a * source_classes + row) * head.block + j)
    return dst, src


@torch.no_grad()
def transfer_head_rows(source_state: dict[str, torch.Tensor], model: nn.Module, head_rows: list[int]) -> list[str]:
    """Copy the pretrained class rows named by ``head_rows`` into ``model``'s new heads.

    Call it after the new heads are in place. A layer is copied when ``model`` has it and
    ``source_state`` holds weights for it whose per-class shape (input features, hidden channels,
    kernel) matches; a mask head built with another ``mask_hidden`` is left as initialised, with a
    warning.

    Args:
        source_state: the pretrained whole-model state dict (its heads still sized for its own classes).
        model: the model with heads sized for ``len(head_rows)`` classes (background included).
        head_rows: ``head_rows[label]`` = the source class index whose rows start ``label``, -1 to
            keep ``label``'s rows as initialised (see :func:`parse_coco_mapping`).

    Returns:
        The names of the parameters written (e.g. ``roi_heads.box_predictor.cls_score.weight``).

    Raises:
        WeightsError: ``head_rows`` names a class the source does not have, or no class head of
            ``model`` could be filled from ``source_state``.
    """
    modules = dict(model.named_modules())
    touched: list[str] = []
    for head in _HEADS:
        layer = modules.get(head.module)
        if layer is None:
            continue
        anchors = _num_anchors(model) if head.per_anchor else 1
        for kind in ("weight", "bias"):
            param = getattr(layer, kind, None)
            source = source_state.get(f"{head.module}.{kind}")
            if param is None or source is None:
                continue
            name = f"{head.module}.{kind}"
            if param.shape[1:] != source.shape[1:]:
                logger.warning("init_head_from_coco: %s is %s in the model but %s in the pretrained weights; "
                               "left as initialised", name, tuple(param.shape), tuple(source.shape))
                continue
            per = anchors * head.block
            target_classes, source_classes = param.shape[0] // per, source.shape[0] // per
            if len(head_rows) != target_classes:
                raise ValueError(f"head_rows has {len(head_rows)} entries but {name} has {target_classes} classes")
            bad = [r for r in head_rows if r >= source_classes]
            if bad:
                raise WeightsError(f"init_head_from_coco: source class {bad[0]} does not exist: the pretrained "
                                   f"{name} has {source_classes} classes")
            dst, src = _channel_map(head, head_rows, anchors, target_classes, source_classes)
            if not dst:
                continue
            param[torch.tensor(dst)] = source[torch.tensor(src)].to(param.dtype)
            touched.append(name)
    if not touched and any(r >= 0 for r in head_rows[1:]):
        raise WeightsError("init_head_from_coco: the model has no class head that the pretrained weights fill "
                           f"(looked for {', '.join(h.module for h in _HEADS)})")
    logger.info("init_head_from_coco: copied pretrained class rows %s into %s", head_rows, ", ".join(touched))
    return touched
