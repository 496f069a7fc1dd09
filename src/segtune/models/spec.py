"""Owns the model registry's entry type: what a registered model is, and how its config becomes arguments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from segtune.registry import Registry

#: Tasks a model can do; the evaluator scores ``bbox`` always, ``segm`` for masks, ``keypoints`` for keypoints.
TASKS = ("instance-segmentation", "detection", "keypoints")


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes:
        name: the ``--model`` name.
        task: one of :data:`TASKS`.
        build: ``build(*, num_classes, weights, load_weights=True, weights_backbone, norm,
            trainable_backbone_layers, num_keypoints, **kwargs) -> nn.Module``; ``num_classes`` counts
            the background; ``load_weights=False`` builds the architecture the weights imply and loads
            nothing (a segtune checkpoint is loaded on top).
        from_config: maps a ``ModelConfig`` section to the builder's own keyword arguments (Detectron2's
            from_config idea: the builder never sees a config object).
        weights_name: the torchvision model name whose weights enum describes the whole-model weights
            (``torchvision.models.get_model_weights``), or None for a composed model without any.
        description: one line for ``segtune models``.
        fits_anchors: its anchors are settings (``model.anchor_sizes``, ``model.aspect_ratios``) that
            ``model.adapt_to_data`` may fit to the data's boxes (the custom-backbone families with an FPN).
    """

    name: str
    task: str
    build: Callable[..., nn.Module]
    from_config: Callable[[Any], dict[str, Any]]
    weights_name: str | None
    description: str = ""
    fits_anchors: bool = False

    @property
    def has_masks(self) -> bool:
        return self.task == "instance-segmentation"

    @property
    def has_keypoints(self) -> bool:
        return self.task == "keypoints"


MODELS: Registry[ModelSpec] = Registry("model")


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to :data:`MODELS` (a duplicate name is an error)."""
    MODELS.register(spec.name)(spec)
    return spec
