"""Owns a detector's class- and keypoint-specific output layers: reading their sizes and replacing them.

Only the layers whose size depends on the classes (or the keypoint count) are replaced; everything in
front of them -- the box head's fully connected layers, the mask head's convolutions, RetinaNet's and
FCOS's convolution towers -- keeps its weights. So a pretrained head's rows can later be copied into
the new layers (``segtune.models.transfer``) and still read the features they were trained on.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.fcos import FCOSClassificationHead
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetClassificationHead


def num_classes_of(model: nn.Module) -> int:
    """The number of classes (background included) ``model`` predicts."""
    if isinstance(model, FasterRCNN):
        return model.roi_heads.box_predictor.cls_score.out_features
    if isinstance(model, (RetinaNet, FCOS)):
        return model.head.classification_head.num_classes
    raise TypeError(f"not a torchvision detector: {type(model).__name__}")


def num_keypoints_of(model: nn.Module) -> int | None:
    """The keypoint count of a Keypoint R-CNN; None for a model without keypoints."""
    predictor = getattr(getattr(model, "roi_heads", None), "keypoint_predictor", None)
    return None if predictor is None else predictor.kps_score_lowres.out_channels


def mask_hidden_of(model: nn.Module) -> int | None:
    """The width of a Mask R-CNN's mask predictor (its up-sampling layer's output); None without masks."""
    predictor = getattr(getattr(model, "roi_heads", None), "mask_predictor", None)
    return None if predictor is None else predictor.conv5_mask.out_channels


def replace_heads(model: nn.Module, num_classes: int, *, mask_hidden: int | None = None) -> None:
    """Give ``model`` new class-specific output layers for ``num_classes`` (background included).

    * Faster / Mask / Keypoint R-CNN: a new box predictor (class scores and per-class box deltas).
    * Mask R-CNN: a new mask predictor ``mask_hidden`` channels wide (default: as wide as now); at
      the current width its up-sampling layer (``conv5_mask``) keeps its weights and only the
      per-class logits layer is new.
    * RetinaNet, FCOS: a new classification logits layer for the same number of anchors, with the
      focal-loss prior bias; the convolution tower in front of it keeps its weights. Box regression
      is class-agnostic there and stays.

    Raises:
        TypeError: ``model`` is none of those detectors.
    """
    if isinstance(model, FasterRCNN):
        heads = model.roi_heads
        heads.box_predictor = FastRCNNPredictor(heads.box_predictor.cls_score.in_features, num_classes)
        if heads.has_mask():
            old = heads.mask_predictor
            hidden = old.conv5_mask.out_channels if mask_hidden is None else mask_hidden
            new = MaskRCNNPredictor(old.conv5_mask.in_channels, hidden, num_classes)
            if hidden == old.conv5_mask.out_channels:
                new.conv5_mask = old.conv5_mask
            heads.mask_predictor = new
        return
    if isinstance(model, (RetinaNet, FCOS)):
        old = model.head.classification_head
        head_class = RetinaNetClassificationHead if isinstance(model, RetinaNet) else FCOSClassificationHead
        # A fresh head brings torchvision's initialisation of the logits layer; its own tower is then
        # swapped for the trained one (so the tower's norm layers are whatever the model had).
        new = head_class(old.cls_logits.in_channels, old.num_anchors, num_classes)
        new.conv = old.conv
        model.head.classification_head = new
        return
    raise TypeError(f"cannot replace the heads of {type(model).__name__}")
