"""Owns detection backbones cut from torchvision classification models: trunk, FPN, weights, norm, freezing.

The recipe's approach 2 ("modify the model to add a different backbone"): take a classification
network, keep its convolutional trunk, and either hand the detector its last feature map alone
(``mobilenet_v2(...).features`` with ``out_channels = 1280``) or put torchvision's feature pyramid
on several of its stages (:class:`torchvision.models.detection.backbone_utils.BackboneWithFPN`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from segtune.errors import ConfigError, WeightsError
from segtune.models.norms import norm_layer_for
from segtune.models.weights import load_weights as load_weights_state
from segtune.models.weights import resolve_backbone_weights

logger = logging.getLogger(__name__)

#: Channels of every feature-pyramid level (torchvision's detection backbones use 256).
FPN_CHANNELS = 256
#: Side of the blank image pushed once through a trunk to learn each stage's stride and channels.
_PROBE_SIZE = 64
#: Trainable stages by default under pretrained weights (torchvision's default for ResNet-FPN).
DEFAULT_TRAINABLE_PRETRAINED = 3


@dataclass(frozen=True)
class _Family:
    """How a classification model is cut into a trunk.

    Attributes:
        trunk: ``resnet``: the model without ``avgpool`` and ``fc``; ``features``: ``model.features``.
        bn_eps: the BatchNorm eps the classification weights were trained with, when not torch's 1e-5
            (MobileNetV3 uses 1e-3); frozen statistics must divide by the same eps.
        batch_norm: False for models that normalise with LayerNorm (ConvNeXt); ``norm`` does not apply.
    """

    trunk: str
    bn_eps: float | None = None
    batch_norm: bool = True


#: Supported ``--backbone`` names: torchvision classification models.
BACKBONES: dict[str, _Family] = {
    "mobilenet_v2": _Family("features"),
    "mobilenet_v3_large": _Family("features", bn_eps=1e-3),
    "mobilenet_v3_small": _Family("features", bn_eps=1e-3),
    "resnet18": _Family("resnet"),
    "resnet34": _Family("resnet"),
    "resnet50": _Family("resnet"),
    "resnet101": _Family("resnet"),
    "resnext50_32x4d": _Family("resnet"),
    "efficientnet_b0": _Family("features"),
    "convnext_tiny": _Family("features", batch_norm=False),
}


@dataclass(frozen=True)
class Stage:
    """A run of trunk children that work at one stride: the unit ``trainable_layers`` counts.

    Attributes:
        children: names of the trunk's children in this stage, in order.
        stride: input pixels per output pixel after the stage.
        channels: channels the stage's last child puts out.
    """

    children: tuple[str, ...]
    stride: int
    channels: int


def backbone_family(name: str) -> _Family:
    """The family of ``--backbone name``.

    Raises:
        ConfigError: ``name`` is not supported; the message lists the supported names.
    """
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone '{name}' is not supported; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def backbone_norm_layer(name: str, norm: str, *, pretrained: bool,
                        own_eps: bool = True) -> Callable[[int], nn.Module] | None:
    """The normalisation layer for backbone ``name``; None keeps the model's own (ConvNeXt's LayerNorm).

    ``own_eps`` gives BatchNorm the eps the classification weights were trained with (MobileNetV3:
    1e-3); False keeps torch's 1e-5, as torchvision's detector builders do for their own models.

    Raises:
        ConfigError: ``norm`` is unknown, is not ``auto`` for a LayerNorm model, or is ``gn`` under
            pretrained BatchNorm weights (their running statistics have no place in GroupNorm).
    """
    family = backbone_family(name)
    if not family.batch_norm:
        if norm != "auto":
            raise ConfigError(f"model.norm '{norm}': backbone {name} normalises with LayerNorm, which does not "
                              f"depend on the batch size; leave model.norm at auto")
        return None
    layer = checked_norm_layer(norm, pretrained=pretrained, what=f"the {name} backbone")
    if own_eps and family.bn_eps is not None and layer in (FrozenBatchNorm2d, nn.BatchNorm2d):
        return partial(layer, eps=family.bn_eps)
    return layer


def checked_norm_layer(norm: str, *, pretrained: bool, what: str) -> Callable[[int], nn.Module]:
    """:func:`segtune.models.norms.norm_layer_for`, with config errors for the user."""
    if norm == "gn" and pretrained:
        raise ConfigError(
            f"model.norm 'gn': the pretrained weights of {what} were trained with BatchNorm and do not load into "
            f"GroupNorm; use gn with --weights none --weights-backbone none, or model.norm auto | frozen_bn | bn"
        )
    try:
        return norm_layer_for(norm, pretrained=pretrained)
    except ValueError as e:
        raise ConfigError(f"model.norm: {e}") from None


def trunk_of(model: nn.Module, name: str) -> nn.Sequential:
    """The convolutional trunk of classification model ``model`` (backbone ``name``), sharing its modules."""
    return _trunk(model, backbone_family(name))


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], *, name: str, source: str) -> None:
    """Load a classification state dict into ``model``'s trunk: every trunk tensor must fit, the
    classifier part of the file (``fc``, ``classifier``) is unused. The one rule for backbone weights."""
    load_trunk_weights(trunk_of(model, name), state, name=name, source=source)
    logger.info("backbone %s: loaded weights %s", name, source)


def _trunk(model: nn.Module, family: _Family) -> nn.Sequential:
    if family.trunk == "resnet":
        # The children's names are kept, so the trunk's state-dict keys are the classifier's (conv1.weight, ...).
        return nn.Sequential(OrderedDict((n, m) for n, m in model.named_children() if n not in ("avgpool", "fc")))
    return model.features


def _trunk_state(state: dict[str, torch.Tensor], family: _Family) -> dict[str, torch.Tensor]:
    """The part of a classification state dict that belongs to the trunk, keyed as the trunk names it."""
    if family.trunk == "features":
        return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_trunk_weights(trunk: nn.Module, state: dict[str, torch.Tensor], *, name: str, source: str,
                       family: _Family | None = None) -> None:
    """Load a classification model's state dict (torchvision's key names) into a trunk cut from it.

    Raises:
        WeightsError: the file's tensors do not fit the trunk; the message names ``source``.
    """
    sub = _trunk_state(state, family or backbone_family(name))
    try:
        missing, unexpected = trunk.load_state_dict(sub, strict=False)
    except RuntimeError as e:  # a shape mismatch
        raise WeightsError(f"{source}: does not fit the {name} backbone ({str(e).splitlines()[-1].strip()})") from None
    # BatchNorm fills a missing num_batches_tracked itself; FrozenBatchNorm drops it.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys)
        raise WeightsError(f"{source}: does not fit the {name} backbone (expected a state dict of torchvision's "
                           f"{name} classification model; {detail})")


def trunk_stages(trunk: nn.Sequential) -> list[Stage]:
    """Group the trunk's children by output stride, probing once with a blank image.

    Probing rather than hard-coding indices keeps this right for every torchvision version.
    """
    was_training = trunk.training
    trunk.eval()  # no BatchNorm statistics are updated by the probe
    stages: list[Stage] = []
    x = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE)
    with torch.no_grad():
        for child_name, child in trunk.named_children():
            x = child(x)
            stride = _PROBE_SIZE // x.shape[-1]
            if stages and stages[-1].stride == stride:
                stages[-1] = Stage((*stages[-1].children, child_name), stride, x.shape[1])
            else:
                stages.append(Stage((child_name,), stride, x.shape[1]))
    trunk.train(was_training)
    return stages


def trainable_stages(requested: int | None, num_stages: int, *, pretrained: bool, name: str) -> int:
    """How many stages train: ``requested`` (default 3) under pretrained weights, all of them without.

    Freezing randomly initialised stages would only stop them learning, so without pretrained
    weights a requested value is ignored with a warning, as torchvision's builders do.

    Raises:
        ConfigError: ``requested`` is outside 0..``num_stages``.
    """
    if requested is not None and not 0 <= requested <= num_stages:
        raise ConfigError(f"model.trainable_backbone_layers must be between 0 and {num_stages} for {name}, "
                          f"got {requested}")
    if not pretrained:
        if requested not in (None, num_stages):
            logger.warning("model.trainable_backbone_layers=%d ignored: without pretrained weights all %d "
                           "stages of %s train", requested, num_stages, name)
        return num_stages
    return min(DEFAULT_TRAINABLE_PRETRAINED, num_stages) if requested is None else requested


def freeze_stages(trunk: nn.Module, stages: list[Stage], trainable_layers: int, *, name: str) -> None:
    """Stop gradients in all but the last ``trainable_layers`` stages (0..len(stages), checked by the caller)."""
    for stage in stages[: len(stages) - trainable_layers]:
        for child in stage.children:
            getattr(trunk, child).requires_grad_(False)


def build_backbone(
    name: str,
    *,
    fpn: bool,
    weights_backbone: str | None,
    norm: str = "auto",
    trainable_layers: int | None = None,
    load_weights: bool = True,
    pretrained: bool | None = None,
    progress: bool = True,
    fpn_channels: int = FPN_CHANNELS,
    fpn_levels: int = 4,
) -> nn.Module:
    """A detection backbone made from torchvision classification model ``name``.

    The trunk is the model's convolutional part (``features`` for MobileNet, EfficientNet and
    ConvNeXt; everything before ``avgpool`` for ResNet/ResNeXt).

    * ``fpn=False``: the trunk itself; it returns its last feature map (a tensor, which torchvision's
      detectors name ``'0'``), and ``out_channels`` is that map's channel count (1280 for
      ``mobilenet_v2``, 512 for ``resnet18``, 2048 for ``resnet50``).
    * ``fpn=True``: a :class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN` over the
      last map of each stride-4, 8, 16 and 32 stage, ``out_channels`` 256, returning maps
      ``'0'``..``'3'`` plus ``'pool'`` (a max-pooled stride-64 level), like torchvision's ResNet-FPN.
      ``fpn_levels`` 3 leaves out the stride-4 stage (maps ``'0'``..``'2'`` at strides 8-32 plus
      ``'pool'``), and ``fpn_channels`` narrows every level: both cut the cost of the pyramid and
      of everything after it several-fold, for data whose objects are not small.

    A "layer" for ``trainable_layers`` is one stage of the trunk: all its children that work at one
    stride, counted from the deep end. ResNet/ResNeXt: conv1+bn1, layer1, layer2, layer3, layer4
    (torchvision's meaning, 0-5); MobileNet and EfficientNet: the stride-2, 4, 8, 16 and 32 blocks
    (0-5); ConvNeXt: its four stages (0-4). Frozen stages keep their weights; under ``bn`` their
    BatchNorm statistics still move, as in torchvision.

    Args:
        name: a key of :data:`BACKBONES`.
        fpn: put a feature pyramid on the trunk.
        weights_backbone: ``DEFAULT`` (``IMAGENET1K_V1`` where the model has it, as torchvision's
            detection builders use), an entry name of the model's weights enum, ``none``, or a path
            to a state dict of the classification model; official entries come from the torch hub
            cache (``$TORCH_HOME/hub/checkpoints``) or are downloaded into it
            (:func:`segtune.models.weights.resolve_backbone_weights`).
        norm: ``auto`` (frozen BatchNorm when pretrained, BatchNorm otherwise), ``frozen_bn``, ``bn``
            or ``gn``; ConvNeXt keeps its LayerNorm and takes ``auto`` only.
        trainable_layers: stages left trainable under pretrained weights (default 3); without
            pretrained weights every stage trains (a value is ignored with a warning).
        load_weights: False builds the same architecture but loads nothing (a checkpoint follows).
        pretrained: whether pretrained weights will end up in the backbone, which decides ``auto``
            norm and the default ``trainable_layers``; default: whether ``weights_backbone`` names
            any. A detector whose whole-model weights are loaded afterwards passes True.
        progress: show a download progress bar.
        fpn_channels: channels of every pyramid level (``out_channels``).
        fpn_levels: how many of the stride-4, 8, 16 and 32 stages feed the pyramid, from the deep end (1-4).

    Returns:
        The backbone module, with an ``out_channels`` attribute.

    Raises:
        ConfigError: unknown ``name``, bad ``norm`` or ``trainable_layers``.
        WeightsError: the weights cannot be found, fetched or loaded; offline, the message names the
            file to place in the hub cache.
    """
    weights = resolve_backbone_weights(name, weights_backbone, must_exist=load_weights)
    if pretrained is None:
        pretrained = weights is not None
    model = classification_body(name, backbone_norm_layer(name, norm, pretrained=pretrained))
    if load_weights and weights is not None:
        load_backbone_weights(model, load_weights_state(weights, progress=progress, option="--weights-backbone"),
                              name=name, source=weights_source(weights, name))
    trunk = trunk_of(model, name)
    stages = trunk_stages(trunk)
    freeze_stages(trunk, stages, trainable_stages(trainable_layers, len(stages), pretrained=pretrained, name=name),
                  name=name)
    return on_trunk(trunk, stages, name=name, fpn=fpn, fpn_channels=fpn_channels, fpn_levels=fpn_levels)


def classification_body(name: str, norm_layer: Callable[[int], nn.Module] | None) -> nn.Module:
    """Torchvision classification model ``name``, randomly initialised, with ``norm_layer`` (None: its own)."""
    return torchvision.models.get_model(name, weights=None, **({} if norm_layer is None else {"norm_layer": norm_layer}))


def weights_source(weights: object, name: str) -> str:
    """How a resolved weights value is named in messages: the file, or ``model ENTRY``."""
    return str(weights) if isinstance(weights, Path) else f"{name} {getattr(weights, 'name', weights)}"


def on_trunk(trunk: nn.Sequential, stages: list[Stage], *, name: str, fpn: bool, fpn_channels: int = FPN_CHANNELS,
             fpn_levels: int = 4) -> nn.Module:
    """The detection backbone on a trunk: the trunk itself (its last map), or an FPN on its stages."""
    if not fpn:
        trunk.out_channels = stages[-1].channels
        return trunk
    levels = [stage for stage in stages if stage.stride >= 4]
    if not 1 <= fpn_levels <= len(levels):
        raise ConfigError(f"model.fpn_levels must be 1-{len(levels)} for {name} (its stride 4-32 stages), got {fpn_levels}")
    levels = levels[len(levels) - fpn_levels:]
    return BackboneWithFPN(
        trunk,
        return_layers={stage.children[-1]: str(i) for i, stage in enumerate(levels)},
        in_channels_list=[stage.channels for stage in levels],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def feature_names(backbone: nn.Module) -> list[str]:
    """Names of the feature maps ``backbone`` returns, in order (``['0']`` for a single map).

    An FPN's ``'pool'`` level is included: anchors are generated on it, RoIs are not pooled from it.
    """
    if isinstance(backbone, BackboneWithFPN):
        names = [str(v) for v in backbone.body.return_layers.values()]
        if isinstance(backbone.fpn.extra_blocks, LastLevelMaxPool):
            names.append("pool")
        return names
    return ["0"]
