"""Owns pretrained weights: names through torchvision's weights API, the hub cache, local files.

Nothing here downloads behind the user's back without saying where the file goes, and every
``torch.load`` is ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import io

import logging
import os
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.hub
from torchvision.models import WeightsEnum, get_model_weights

from segtune.errors import WeightsError

logger = logging.getLogger(__name__)

NO_WEIGHTS = ("none", "None", "")
#: What a torchvision weights entry name looks like (``DEFAULT``, ``COCO_V1``, ``IMAGENET1K_V2``).
_ENTRY_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def weights_enum(model_name: str) -> type[WeightsEnum]:
    return get_model_weights(model_name)


@dataclass(frozen=True)
class Weights:
    """A ``--weights`` / ``--weights-backbone`` value, parsed once where it enters (:meth:`parse`).

    ``kind`` is ``none`` (random initialisation), ``entry`` (a torchvision weights entry: ``name`` is
    ``DEFAULT`` or an entry such as ``COCO_V1``, checked against a model's enum by :meth:`resolve`)
    or ``file`` (``path``: a state dict or segtune checkpoint). ``option`` names the flag in errors.
    """

    kind: str
    name: str | None = None
    path: Path | None = None
    option: str = "--weights"

    @classmethod
    def parse(cls, value: Weights | str | os.PathLike | None, option: str = "--weights") -> Weights:
        """``none``/empty/None -> none; an existing file -> file; an upper-case entry name -> entry;
        anything else -> file (it may be missing when only the architecture is wanted)."""
        if isinstance(value, Weights):
            return value
        if value is None or str(value) in NO_WEIGHTS:
            return cls("none", option=option)
        text = str(value)
        path = Path(os.path.expanduser(text))
        if _ENTRY_NAME.match(text) and not path.is_file():
            return cls("entry", name=text, option=option)
        return cls("file", path=path, option=option)

    @property
    def is_none(self) -> bool:
        return self.kind == "none"

    def __str__(self) -> str:
        return {"none": "none", "entry": self.name, "file": str(self.path)}[self.kind]

    def resolve(self, model_name: str | None, *, must_exist: bool = True, owner: str | None = None,
                default: str | None = None) -> WeightsEnum | Path | None:
        """The torchvision entry of ``model_name``'s weights enum, the file, or None.

        Args:
            model_name: the torchvision model whose enum holds the entries; None for a model that has
                none published (``DEFAULT`` then means none, and any other entry is an error).
            must_exist: a file must be there (False: only the architecture it implies is wanted).
            owner: the model named in messages (default ``model_name``).
            default: the entry ``DEFAULT`` stands for, where it is not the enum's own.
        """
        owner = owner or model_name
        if self.kind == "none":
            return None
        if self.kind == "file" and (self.path.is_file() or not must_exist):
            return self.path
        if self.kind == "file" and model_name is None:
            raise WeightsError(f"{self.option} '{self.path}': no such file ({owner} has no published weights; "
                               f"{self.option} takes a path to a state dict or segtune checkpoint, DEFAULT or none)")
        if self.kind == "file":
            names = ", ".join(w.name for w in weights_enum(model_name))
            raise WeightsError(f"{self.option} '{self.path}' is neither a weights name for {model_name} (DEFAULT, "
                               f"{names}, none) nor an existing file")
        if model_name is None:
            what = "whole-model" if self.option == "--weights" else "backbone"
            if self.name == "DEFAULT":
                logger.info("%s has no published %s weights; DEFAULT means none", owner, what)
                return None
            raise WeightsError(f"{self.option} '{self.name}': {owner} has no published {what} weights; "
                               f"{self.option} takes a path to a state dict or segtune checkpoint, DEFAULT or none")
        enum = weights_enum(model_name)
        names = [w.name for w in enum]
        name = default if self.name == "DEFAULT" and default in names else self.name
        if name == "DEFAULT":
            return enum.DEFAULT  # type: ignore[attr-defined]
        if name in names:
            return enum[name]
        raise WeightsError(f"{self.option} '{self.name}' is neither a weights name for {model_name} (DEFAULT, "
                           f"{', '.join(names)}, none) nor an existing file")


def resolve_weights(
    model_name: str, spec: Weights | str | None, *, must_exist: bool = True, option: str = "--weights"
) -> WeightsEnum | Path | None:
    """Turn ``--weights`` into a torchvision weights entry, a local file, or ``None`` (random init).

    ``spec`` is ``DEFAULT``, an entry name such as ``COCO_V1``, ``none``, or a path to a file.
    ``must_exist=False`` accepts a path that is not there (only the architecture it implies is
    wanted, e.g. to rebuild a checkpoint trained from that file on another machine). ``option``
    names the flag in error messages.
    """
    return Weights.parse(spec, option).resolve(model_name, must_exist=must_exist)


def resolve_backbone_weights(
    backbone_name: str, spec: Weights | str | None, *, must_exist: bool = True
) -> WeightsEnum | Path | None:
    """Turn ``--weights-backbone`` into a classification model's weights entry, a local file, or ``None``.

    ``DEFAULT`` here means ``IMAGENET1K_V1`` where the backbone has it: the entry torchvision's
    detection builders and reference recipes start from (and that its legacy
    ``pretrained_backbone=True`` meant), not the classification enum's own DEFAULT, which for
    ResNet-50 and MobileNetV3 is a V2 recipe tuned for ImageNet accuracy.
    """
    return Weights.parse(spec, "--weights-backbone").resolve(backbone_name, must_exist=must_exist,
                                                            default="IMAGENET1K_V1")


@dataclass(frozen=True)
class ResolvedWeights:
    """What a detector starts from: whole-model weights, else backbone-only weights, else nothing."""

    whole: WeightsEnum | Path | None
    backbone: WeightsEnum | Path | None

    @property
    def pretrained(self) -> bool:
        """Whether pretrained statistics end up in the backbone (decides ``auto`` norm and frozen stages)."""
        return self.whole is not None or self.backbone is not None


def resolve_detector_weights(weights: Weights, weights_backbone: Weights, *, model: str, whole_from: str | None,
                             backbone_from: str, must_exist: bool = True) -> ResolvedWeights:
    """The one rule for what a detector loads: ``weights`` (from ``whole_from``'s enum, or a file; a model
    without published weights takes DEFAULT as none), and only when that is none, ``weights_backbone``
    (from ``backbone_from``'s enum, DEFAULT = IMAGENET1K_V1, or a file), as torchvision's builders do."""
    whole = weights.resolve(whole_from, must_exist=must_exist, owner=model)
    backbone = None
    if whole is None:
        backbone = weights_backbone.resolve(backbone_from, must_exist=must_exist, default="IMAGENET1K_V1")
    return ResolvedWeights(whole, backbone)


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
        # torch hub writes its own "Downloading: <url>" line on stderr before trying; a quiet probe
        # (progress=False) keeps it off, so the one line the user sees is segtune's, saying what happened.
        with contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO()):
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
