"""Owns what a model family declares about itself, once, beside its builders: what its models output, how
their inner score threshold and detection count are set, the hooks they need under autocast, how they
describe their input, and what an export needs changed.

Code outside ``segtune.models`` asks a model's family (:func:`family_of`) and never reads a model's
attributes (``roi_heads``, ``rpn``, ``transform``) itself, so any ``nn.Module`` that follows
torchvision's detection contract -- ``model(images, targets)`` returns a dict of losses in training
mode, ``model(images)`` a list of ``{"boxes", "labels", "scores", "masks"?, "keypoints"?}`` in eval
mode -- can be trained, evaluated, predicted and exported once its family is registered
(:func:`register_family`) and its builder is a :class:`~segtune.models.spec.ModelSpec`.

The base class is the family of a model that declares nothing more than that contract: it outputs
boxes, labels and scores (a subclass says more), keeps no score threshold inside, needs no autocast
hooks, and takes its input as given.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from segtune.errors import ConfigError
from segtune.models.loading import HeadKeys
from segtune.registry import Registry

#: What a detector may output per image, in the order exported files list them.
OUTPUT_ORDER = ("boxes", "labels", "scores", "masks", "keypoints", "keypoints_scores")


class ModelFamily:
    """What every model of one family is and can do; subclass it and override what differs.

    Attributes:
        name: the family's registered name.
        model_types: the ``nn.Module`` classes the family answers for (:func:`family_of` matches them).
        heads: state-dict key prefixes of the class-specific layers and optional heads (the loading rule's
            data, :mod:`segtune.models.loading`); None where whole-model weights are never loaded.
        exports: the exported formats the family's models can be written as (see ``segtune.runtimes``).
        dynamo_onnx: False where torch's dynamo ONNX exporter is known to fail on the family's models:
            ``--exporter auto`` then takes the TorchScript-based exporter at once, not after a failed try.
    """

    name = "detector"
    model_types: tuple[type, ...] = ()
    heads: HeadKeys | None = None
    exports: tuple[str, ...] = ("onnx", "torchscript")
    dynamo_onnx = True

    def outputs(self, model: nn.Module) -> tuple[str, ...]:
        """The keys of each image's answer in eval mode, in :data:`OUTPUT_ORDER`."""
        return ("boxes", "labels", "scores")

    def min_score(self, model: nn.Module) -> float | None:
        """The score below which the model drops detections itself; None: it keeps no such threshold."""
        return None

    def set_min_score(self, model: nn.Module, value: float) -> None:
        """Make the model drop detections scoring below ``value`` itself (see :mod:`segtune.models.min_score`)."""
        raise ConfigError(f"{type(model).__name__}: has no score threshold inside it to set")

    def set_detections_per_image(self, model: nn.Module, value: int) -> None:
        """Make the model keep at most ``value`` detections per image."""
        raise ConfigError(f"{type(model).__name__}: has no number of detections per image to set")

    def precision_hooks(self, model: nn.Module) -> list[RemovableHandle]:
        """Register the forward hooks that keep the model right under autocast and channels-last weights
        (e.g. boxes decoded in float32); none by default. Returns their handles."""
        return []

    def ready_for_any_input(self, model: nn.Module) -> None:
        """Settle, once the model is built, what it would otherwise infer from the first image it sees (so
        an odd first image cannot set it wrongly for the model's life); nothing by default."""

    def ready_for_export(self, model: nn.Module, fmt: str) -> None:
        """Change the export's own copy of the model, in place, where format ``fmt`` needs it; nothing by default."""

    def input_spec(self, model: nn.Module) -> dict[str, Any]:
        """How the model resizes and normalises its input (``min_size``, ``max_size``, ``image_mean``,
        ``image_std``), for an exported file's sidecar; empty when the model takes its input as given."""
        return {}

    def matches(self, model: nn.Module) -> bool:
        return bool(self.model_types) and isinstance(model, self.model_types)


FAMILIES: Registry[ModelFamily] = Registry("model family")
#: The family of a model no registered family claims: torchvision's detection contract and nothing more.
GENERIC = ModelFamily()


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family`` to :data:`FAMILIES` under its ``name`` (a duplicate name is an error)."""
    FAMILIES.register(family.name)(family)
    return family


def unwrap(model: Any) -> Any:
    """The model inside a DistributedDataParallel (or any ``.module`` wrapper such as an autocast runner)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def family_of(model: Any) -> ModelFamily:
    """The registered family whose ``model_types`` ``model`` is an instance of (the most specific one when
    several match), else :data:`GENERIC`."""
    model = unwrap(model)
    found = [FAMILIES.get(name) for name in FAMILIES.names() if FAMILIES.get(name).matches(model)]
    if not found:
        return GENERIC
    # The family of the nearest class in the model's MRO wins (Mask R-CNN is also a Faster R-CNN).
    mro = type(model).__mro__

    def distance(family: ModelFamily) -> int:
        return min(mro.index(t) for t in family.model_types if t in mro)

    return min(found, key=distance)
