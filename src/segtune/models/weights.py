"""Owns pretrained weights: names through torchvision's weights API, the hub cache, local files.

Nothing here downloads behind the user's back without saying where the file goes, and every
``torch.load`` is ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
import urllib.error
from pathlib import Path
from typing import Any

import torch
import torch.hub
from torchvision.models import WeightsEnum, get_model_weights

from segtune.errors import WeightsError

logger = logging.getLogger(__name__)

NO_WEIGHTS = ("none", "None", "")


def weights_enum(model_name: str) -> type[WeightsEnum]:
    return get_model_weights(model_name)


def resolve_weights(
    model_name: str, spec: str | None, *, must_exist: bool = True, option: str = "--weights"
) -> WeightsEnum | Path | None:
    """Turn ``--weights`` into a torchvision weights entry, a local file, or ``None`` (random init).

    ``spec`` is ``DEFAULT``, an entry name such as ``COCO_V1``, ``none``, or a path to a file.
    ``must_exist=False`` accepts a path that is not there (only the architecture it implies is
    wanted, e.g. to rebuild a checkpoint trained from that file on another machine). ``option``
    names the flag in error messages.
    """
    if spec is None or spec in NO_WEIGHTS:
        return None
    enum = weights_enum(model_name)
    names = [w.name for w in enum]
    if spec == "DEFAULT" or spec in names:
        return enum[spec] if spec != "DEFAULT" else enum.DEFAULT  # type: ignore[attr-defined]
    path = Path(os.path.expanduser(spec))
    if path.is_file() or not must_exist:
        return path
    raise WeightsError(
        f"{option} '{spec}' is neither a weights name for {model_name} (DEFAULT, {', '.join(names)}, none) "
        f"nor an existing file"
    )


def resolve_backbone_weights(
    backbone_name: str, spec: str | None, *, must_exist: bool = True
) -> WeightsEnum | Path | None:
    """Turn ``--weights-backbone`` into a classification model's weights entry, a local file, or ``None``.

    ``DEFAULT`` here means ``IMAGENET1K_V1`` where the backbone has it: the entry torchvision's
    detection builders and reference recipes start from (and that its legacy
    ``pretrained_backbone=True`` meant), not the classification enum's own DEFAULT, which for
    ResNet-50 and MobileNetV3 is a V2 recipe tuned for ImageNet accuracy.
    """
    if spec == "DEFAULT" and "IMAGENET1K_V1" in weights_enum(backbone_name).__members__:
        spec = "IMAGENET1K_V1"
    return resolve_weights(backbone_name, spec, must_exist=must_exist, option="--weights-backbone")


def official_entry(model_name: str, weights: WeightsEnum | Path | None) -> WeightsEnum | None:
    """The torchvision entry ``weights`` is, or whose official file it names (``--weights PATH``)."""
    if isinstance(weights, WeightsEnum):
        return weights
    if isinstance(weights, Path):
        for entry in weights_enum(model_name):
            if os.path.basename(entry.url) == weights.name:
                return entry
    return None


def cache_path(weights: WeightsEnum) -> Path:
    """Where torch.hub keeps (and looks for) the file of ``weights``: ``$TORCH_HOME/hub/checkpoints/<name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from a file: a bare state dict, or a dict holding one under ``model``/``state_dict``."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found") from None
    except Exception as e:  # pickle errors, zip errors, unsafe globals refused by weights_only
        raise WeightsError(f"{path}: not a loadable weights file ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: holds no state dict of tensors")
    return obj


def load_pretrained(weights: WeightsEnum, *, progress: bool = True, option: str = "--weights") -> dict[str, Any]:
    """The state dict of a torchvision weights entry, from the hub cache or downloaded into it.

    Raises:
        WeightsError: the file is not cached and cannot be downloaded; the message says where to put it.
    """
    cached = cache_path(weights)
    if cached.is_file():
        logger.info("loading %s from %s", weights, cached)
        return load_state_dict_file(cached)
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, progress=progress, check_hash=True, map_location="cpu", weights_only=True
        )
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        reason = getattr(e, "reason", e)
        raise WeightsError(
            f"could not download {weights} from {weights.url} ({reason}). "
            f"Without network: download that file elsewhere and place it at {cached} "
            f"(the hub cache; set TORCH_HOME to move it), or pass {option} /path/to/file.pth; "
            f"{option} none goes without them"
            + (" (with --weights none: from random initialisation)" if option == "--weights-backbone" else "")
        ) from None


def load_weights(weights: WeightsEnum | Path, *, progress: bool = True, option: str = "--weights") -> dict[str, Any]:
    """The state dict of a resolved ``--weights`` / ``--weights-backbone`` (``option``, named in errors)."""
    if isinstance(weights, WeightsEnum):
        return load_pretrained(weights, progress=progress, option=option)
    return load_state_dict_file(weights)


def weights_available(weights: WeightsEnum) -> bool:
    """True when ``weights`` is cached, or can be fetched now (it is then downloaded into the cache)."""
    try:
        load_pretrained(weights, progress=False)
    except WeightsError:
        return False
    return True
