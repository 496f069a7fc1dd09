"""Owns the declarations of torchvision's detector families: the R-CNNs (Faster, Mask, Keypoint, on any
backbone) and the dense one-stage detectors (RetinaNet, FCOS). Everything segtune reads of a
torchvision detector's inside (``roi_heads``, ``rpn``, ``transform``) is read here.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _setup_scales

from segtune.models.family import ModelFamily, register_family
from segtune.models.loading import DENSE_HEADS, RCNN_HEADS


class _EvalResizeInDouble(GeneralizedRCNNTransform):
    """torchvision's transform, resizing as the eager model does when scripted.

    Scripted, torchvision computes the resize scale in float32 (eager: in Python's double), so on some
    image sizes the input comes out a pixel smaller (143 x 0.67132866 = 95.99 -> 95 instead of 96) and
    the detections differ from eager's. Here the scale is computed from Python numbers, which
    TorchScript keeps in double. Inference only: the exported file never trains.
    """

    def resize(self, image: Tensor, target: Optional[dict[str, Tensor]] = None
               ) -> tuple[Tensor, Optional[dict[str, Tensor]]]:
        h, w = image.shape[-2], image.shape[-1]
        scale = min(float(self.min_size[-1]) / float(min(h, w)), float(self.max_size) / float(max(h, w)))
        image = F.interpolate(image[None], size=None, scale_factor=scale, mode="bilinear",
                              recompute_scale_factor=True, align_corners=False)[0]
        return image, target


class _GroupNormOfAnyBatch(nn.GroupNorm):
    """GroupNorm that exports to ONNX for a batch of 0 (an R-CNN head's RoIs when nothing passes the score
    threshold). torch's ONNX export reshapes the input to ``[N, groups, -1]``, which ONNX Runtime cannot
    resolve when N is 0. Here nothing is reshaped: each channel's statistics are averaged over its group by a
    constant block matrix. The same numbers as ``nn.GroupNorm`` (written by hand: no library offers this
    export-side variant). Inference only: on the export's copy of the model."""

    def forward(self, x: Tensor) -> Tensor:
        channels = self.num_channels
        group = torch.arange(channels, device=x.device) // (channels // self.num_groups)
        average = (group[:, None] == group[None, :]).to(x.dtype) / (channels // self.num_groups)  # [C, C]
        centred = x - (x.mean((2, 3)) @ average)[:, :, None, None]
        var = centred.pow(2).mean((2, 3)) @ average
        out = centred * (var + self.eps).rsqrt()[:, :, None, None]
        return out * self.weight[None, :, None, None] + self.bias[None, :, None, None] if self.affine else out


class TorchvisionDetector(ModelFamily):
    """What torchvision's detectors share: ``GeneralizedRCNNTransform`` resizes and normalises inside."""

    # The dynamo exporter fails inside torchvision's batched_nms on a data-dependent size (pytorch/vision#9321),
    # after minutes of tracing: --exporter auto goes straight to the TorchScript-based exporter.
    dynamo_onnx = False

    def input_spec(self, model: nn.Module) -> dict[str, Any]:
        transform = getattr(model, "transform", None)
        return {"min_size": list(getattr(transform, "min_size", ()) or ()),
                "max_size": getattr(transform, "max_size", None),
                "image_mean": list(getattr(transform, "image_mean", ()) or ()),
                "image_std": list(getattr(transform, "image_std", ()) or ())}

    def ready_for_export(self, model: nn.Module, fmt: str) -> None:
        # Both on the export's own copy of the model.
        if fmt == "torchscript" and type(model.transform) is GeneralizedRCNNTransform and model.transform.fixed_size is None:
            model.transform.__class__ = _EvalResizeInDouble
        heads = getattr(model, "roi_heads", None)  # RoI heads see a batch of 0 on an image with no detection
        if fmt == "onnx" and heads is not None:
            for module in heads.modules():
                if type(module) is nn.GroupNorm:
                    module.__class__ = _GroupNormOfAnyBatch


class RCNNFamily(TorchvisionDetector):
    """Faster / Mask / Keypoint R-CNN: the score threshold and detection count live in ``roi_heads``."""

    name = "rcnn"
    model_types = (FasterRCNN,)  # Mask and Keypoint R-CNN are Faster R-CNNs
    heads = RCNN_HEADS

    def outputs(self, model: nn.Module) -> tuple[str, ...]:
        heads = model.roi_heads
        if heads.has_keypoint():
            return ("boxes", "labels", "scores", "keypoints", "keypoints_scores")
        return ("boxes", "labels", "scores", "masks") if heads.has_mask() else ("boxes", "labels", "scores")

    def min_score(self, model: nn.Module) -> float | None:
        return float(model.roi_heads.score_thresh)

    def set_min_score(self, model: nn.Module, value: float) -> None:
        model.roi_heads.score_thresh = value

    def set_detections_per_image(self, model: nn.Module, value: int) -> None:
        model.roi_heads.detections_per_img = int(value)

    def precision_hooks(self, model: nn.Module) -> list[RemovableHandle]:
        return [h for h in (keep_boxes_float32(model), keep_heatmaps_contiguous(model)) if h is not None]

    def ready_for_any_input(self, model: nn.Module) -> None:
        """Set the RoI poolers' feature scales from the backbone's strides on a square image. torchvision's
        MultiScaleRoIAlign infers them from the first image it pools and keeps them: an elongated first image
        (a few pixels high after the resize, padded to 32) makes them wrong, and every later image finds nothing."""
        heads = model.roi_heads
        poolers = [p for p in (heads.box_roi_pool, getattr(heads, "mask_roi_pool", None),
                               getattr(heads, "keypoint_roi_pool", None)) if isinstance(p, MultiScaleRoIAlign)]
        if not poolers:
            return
        side = 256  # a multiple of every stride: the scales come out exact powers of two
        parameter = next(model.backbone.parameters())
        if parameter.is_meta:  # built only to be counted (segtune models): nothing will be pooled
            return
        was_training = model.backbone.training
        model.backbone.eval()  # no batch statistics updated by this zero image
        try:
            with torch.no_grad():
                features = model.backbone(torch.zeros(1, 3, side, side, dtype=parameter.dtype,
                                                      device=parameter.device))
        finally:
            model.backbone.train(was_training)
        if isinstance(features, torch.Tensor):  # a one-level backbone, named as torchvision's R-CNN names it
            features = {"0": features}
        for pooler in poolers:
            levels = [value for name, value in features.items() if name in pooler.featmap_names]  # as it pools
            pooler.scales, pooler.map_levels = _setup_scales(levels, [(side, side)], pooler.canonical_scale,
                                                             pooler.canonical_level)


class DenseFamily(TorchvisionDetector):
    """RetinaNet and FCOS. Their ``score_thresh`` filters candidates before the top-k per level, so it
    is not declared as a threshold segtune moves: predict filters their answers afterwards."""

    name = "dense"
    model_types = (RetinaNet, FCOS)
    heads = DENSE_HEADS

    def set_detections_per_image(self, model: nn.Module, value: int) -> None:
        model.detections_per_img = int(value)


RCNN = register_family(RCNNFamily())
DENSE = register_family(DenseFamily())


def _contiguous(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
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


def _to_float32(_module: nn.Module, _inputs: Any, outputs: tuple[list[Tensor], list[Tensor]]) -> Any:
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
    head = getattr(getattr(model, "rpn", None), "head", None)
    if head is None:
        return None
    return head.register_forward_hook(_to_float32)
