"""Owns the per-image augmentation pipelines (presets by name), built on torchvision.transforms.v2 and tv_tensors.

A training pipeline is put together from named presets (``train.augment``), always in this order,
whatever order the names are given in:

1. ``multiscale`` (random shortest-edge resize) or ``lsj`` (large-scale jitter, then a fixed-size
   crop/pad): the two resample the image, so at most one of them;
2. ``hflip``: random horizontal flip (the tutorial's augmentation), left/right keypoints swapped;
3. ``photometric``: colour jitter of the image only;
4. ``SanitizeBoundingBoxes``: drops instances a geometric step made degenerate, with their label,
   mask, area, iscrowd and keypoints.

``copypaste`` mixes instances between the images of a batch, so it lives in
:mod:`segtune.data.collate`; it is accepted here so one list names every preset.

Images, boxes and masks go through torchvision's v2 functional kernels as tv_tensors. Keypoints
stay a plain ``float32[N, K, 3]`` (x, y, visibility) tensor that the geometric steps below move
themselves, with the same parameters, on every torchvision version. We do not use
``tv_tensors.KeyPoints`` because it only exists from torchvision 0.23, and on 0.29 its kernels
(checked in ``transforms/v2/functional/_geometry.py``) flip as ``x' = W - 1 - x`` (pixel indices)
while boxes flip as ``x' = W - x``, neither swap left and right points nor mark points that a crop
left out as invisible; all three are needed for keypoint R-CNN targets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from segtune.data.boxes import box_areas, mask_areas, mask_boxes
from segtune.errors import ConfigError

#: Every preset name ``train.augment`` accepts.
PRESETS = ("hflip", "multiscale", "lsj", "photometric", "copypaste")

#: Shortest-edge sizes and longest-edge cap of ``multiscale`` (torchvision's detection reference recipe).
MULTISCALE_SIZES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
MULTISCALE_MAX_SIZE = 1333
#: Output size (height, width) and scale range of ``lsj`` (the Copy-Paste / LSJ papers' recipe).
LSJ_SIZE = (1024, 1024)
LSJ_SCALE = (0.1, 2.0)
#: What ``lsj`` pads images with: the ImageNet mean, which the model's normalisation maps to about 0.
PAD_FILL = (124, 116, 104)

Target = dict[str, Any]


def build_transforms(*, train: bool, augment: Sequence[str] = ("hflip",), hflip_prob: float = 0.5,
                     keypoint_names: Sequence[str] | None = None,
                     multiscale_sizes: Sequence[int] = MULTISCALE_SIZES, multiscale_max_size: int = MULTISCALE_MAX_SIZE,
                     lsj_size: tuple[int, int] = LSJ_SIZE, lsj_scale: tuple[float, float] = LSJ_SCALE) -> T.Compose:
    """The pipeline ``dataset[i]`` applies to ``(image, target)``: presets in training, then uint8 to float.

    Args:
        train: apply the ``augment`` presets; evaluation only converts the image to float.
        augment: preset names, any of :data:`PRESETS` (order does not matter, see the module docstring).
        hflip_prob: probability of the ``hflip`` flip; 0 turns it off.
        keypoint_names: the data set's keypoint names (gives the left/right flip map), or None.
        multiscale_sizes: ``multiscale`` picks the shorter side from these (pixels).
        multiscale_max_size: ``multiscale`` caps the longer side at this (pixels).
        lsj_size: ``lsj`` output ``(height, width)``.
        lsj_scale: ``lsj`` scale range, relative to the scale that fits the image in ``lsj_size``.

    Returns:
        A callable ``(image, target) -> (image, target)``: image float32[3, H, W] in [0, 1]; target
        tensors plain (boxes float32[N, 4] XYXY pixels, masks uint8[N, H, W], keypoints float32[N, K, 3]).

    Raises:
        ConfigError: an unknown preset, ``multiscale`` with ``lsj``, or ``copypaste`` on a keypoint data set.
    """
    names = _check_presets(augment, keypoint_names)
    steps: list[Callable] = []
    if train:
        if "multiscale" in names:
            steps.append(RandomShortestSize(multiscale_sizes, max_size=multiscale_max_size))
        if "lsj" in names:
            steps.append(LargeScaleJitter(lsj_size, scale=lsj_scale))
        if "hflip" in names and hflip_prob > 0:
            steps.append(RandomHorizontalFlip(hflip_prob, keypoint_names=keypoint_names))
        if steps:  # only geometric steps can make a box degenerate
            steps.append(T.SanitizeBoundingBoxes(labels_getter=_sanitize_keys))
        if "photometric" in names:
            steps.append(T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05))
    steps.append(T.ToDtype(torch.float32, scale=True))
    steps.append(T.ToPureTensor())
    return T.Compose(steps)


def scaled_sizes(image_size: int) -> dict[str, Any]:
    """``build_transforms`` size arguments for a model whose input's shorter side is ``image_size``.

    ``multiscale`` keeps the reference recipe's sizes relative to its 800 px (480-800 at 800, 192-320
    at 320); ``lsj`` works on an ``image_size`` square (the papers' 1024 px is for 1024-px models).
    """
    factor = image_size / 800
    return {"multiscale_sizes": sorted({round(s * factor) for s in MULTISCALE_SIZES}),
            "multiscale_max_size": round(MULTISCALE_MAX_SIZE * factor), "lsj_size": (image_size, image_size)}


def _check_presets(augment: Sequence[str], keypoint_names: Sequence[str] | None) -> list[str]:
    if isinstance(augment, str):  # "hflip,lsj" from a flag, or one name
        augment = [a for a in augment.split(",") if a.strip()]
    names = [str(a).strip() for a in augment]
    unknown = [a for a in names if a not in PRESETS]
    if unknown:
        raise ConfigError(f"train.augment: unknown preset {unknown[0]!r}; choose from: {', '.join(PRESETS)}")
    if "multiscale" in names and "lsj" in names:
        raise ConfigError("train.augment: 'multiscale' and 'lsj' both resize the image; choose one of them")
    if "copypaste" in names and keypoint_names:
        raise ConfigError("train.augment: 'copypaste' does not support keypoint data sets "
                          "(pasted instances would hide keypoints without updating them); remove it")
    return names


def _sanitize_keys(inputs: Any) -> tuple[torch.Tensor, ...]:
    """The per-instance tensors SanitizeBoundingBoxes must filter with the boxes (masks it finds itself)."""
    target = inputs[1]
    return tuple(target[k] for k in ("labels", "area", "iscrowd", "keypoints") if k in target)


def keypoint_flip_map(names: Sequence[str]) -> list[int]:
    """Where each keypoint goes in a horizontal flip: ``left_eye`` <-> ``right_eye`` and so on.

    Recognises ``left_``/``right_`` and ``l_``/``r_`` prefixes and ``_left``/``_right`` and ``_l``/``_r``
    suffixes (case-insensitive; ``_``, ``-`` or a space as separator). A name without a partner in
    ``names`` (``nose``, or ``left_tail`` with no ``right_tail``) maps to itself.

    Returns:
        ``flip[k]``: the index whose point becomes point ``k`` after the flip (an involution).
    """
    index = {str(n).lower(): i for i, n in enumerate(names)}
    flip = list(range(len(names)))
    for i, name in enumerate(names):
        partner = _partner(str(name).lower())
        if partner is not None and partner in index:
            flip[i] = index[partner]
    return flip


_SIDES = {"left": "right", "right": "left", "l": "r", "r": "l"}
_PREFIX = re.compile(r"^(left|right|l|r)([_\- ])(.+)$")
_SUFFIX = re.compile(r"^(.+)([_\- ])(left|right|l|r)$")


def _partner(name: str) -> str | None:
    if m := _PREFIX.match(name):
        return _SIDES[m.group(1)] + m.group(2) + m.group(3)
    if m := _SUFFIX.match(name):
        return m.group(1) + m.group(2) + _SIDES[m.group(3)]
    return None


# --- geometric steps -------------------------------------------------------------------------------
# Each samples its parameters from torch's global generator (DataLoader seeds it per worker, so runs
# with a seed repeat), applies them to the image, boxes and masks through torchvision's v2 kernels,
# and moves the keypoints itself (see the module docstring).


class RandomHorizontalFlip:
    """Flip image, boxes and masks with probability ``p``; mirror keypoints and swap left and right ones."""

    def __init__(self, p: float = 0.5, *, keypoint_names: Sequence[str] | None = None) -> None:
        self.p = p
        self.flip_map = keypoint_flip_map(keypoint_names) if keypoint_names else None

    def __call__(self, image: tv_tensors.Image, target: Target) -> tuple[tv_tensors.Image, Target]:
        if self.p < 1 and float(torch.rand(1)) >= self.p:
            return image, target
        width = F.get_size(image)[1]
        image, target = _each(F.horizontal_flip, image, target)
        if "keypoints" in target:
            points = target["keypoints"].clone()
            points[..., 0] = width - points[..., 0]  # the box convention: continuous x in [0, W]
            if self.flip_map is not None:
                if len(self.flip_map) != points.shape[1]:
                    raise ConfigError(f"the data set names {len(self.flip_map)} keypoints but its targets have "
                                      f"{points.shape[1]} per instance")
                points = points[:, self.flip_map]
            target["keypoints"] = _hide_invisible(points)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, flip_map={self.flip_map})"


class RandomShortestSize:
    """Resize so the shorter side is a random one of ``sizes`` and the longer side at most ``max_size``."""

    def __init__(self, sizes: Sequence[int], *, max_size: int) -> None:
        if not sizes or min(sizes) < 1 or max_size < max(sizes):
            raise ConfigError(f"multiscale: sizes {list(sizes)} must be positive and at most max_size {max_size}")
        self.sizes = [int(s) for s in sizes]
        self.max_size = int(max_size)

    def __call__(self, image: tv_tensors.Image, target: Target) -> tuple[tv_tensors.Image, Target]:
        height, width = F.get_size(image)
        short = self.sizes[int(torch.randint(len(self.sizes), ()))]
        scale = min(short / min(height, width), self.max_size / max(height, width))
        return resize_sample(image, target, (round(height * scale), round(width * scale)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={self.sizes}, max_size={self.max_size})"


class LargeScaleJitter:
    """Large-scale jitter: resize by a random factor of the fit-in-``size`` scale, then crop or pad to ``size``.

    The crop takes a random window when the resized image is larger; padding goes to the right and
    bottom (so coordinates do not move) with :data:`PAD_FILL`, and with 0 in the masks.
    """

    def __init__(self, size: tuple[int, int] | int, *, scale: tuple[float, float] = LSJ_SCALE) -> None:
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.size) < 1 or not 0 < scale[0] <= scale[1]:
            raise ConfigError(f"lsj: size {self.size} must be positive and scale {scale} an increasing positive range")
        self.scale = (float(scale[0]), float(scale[1]))

    def __call__(self, image: tv_tensors.Image, target: Target) -> tuple[tv_tensors.Image, Target]:
        height, width = F.get_size(image)
        out_h, out_w = self.size
        lo, hi = self.scale
        factor = (lo + (hi - lo) * float(torch.rand(1))) * min(out_h / height, out_w / width)
        new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
        image, target = resize_sample(image, target, (new_h, new_w))
        if new_h > out_h or new_w > out_w:
            top = int(torch.randint(new_h - out_h + 1, ())) if new_h > out_h else 0
            left = int(torch.randint(new_w - out_w + 1, ())) if new_w > out_w else 0
            image, target = _crop(image, target, top, left, min(new_h, out_h), min(new_w, out_w))
        pad_h, pad_w = out_h - F.get_size(image)[0], out_w - F.get_size(image)[1]
        if pad_h or pad_w:
            padding = [0, 0, pad_w, pad_h]  # left, top, right, bottom
            image = F.pad(image, padding, fill=list(PAD_FILL))
            target = dict(target)
            for key in ("boxes", "masks"):
                if key in target:
                    target[key] = F.pad(target[key], padding)  # masks are padded with 0
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale})"


def _each(op: Callable, image: tv_tensors.Image, target: Target, **kwargs: Any) -> tuple[tv_tensors.Image, Target]:
    """Apply one v2 functional op to the image, boxes and masks (a new target dict; the input is untouched)."""
    target = dict(target)
    for key in ("boxes", "masks"):
        if key in target:
            target[key] = op(target[key], **kwargs)
    return op(image, **kwargs), target


def resize_sample(image: tv_tensors.Image, target: Target, size: tuple[int, int]) -> tuple[tv_tensors.Image, Target]:
    """The image, its boxes, masks and keypoints resized to ``size`` (height, width); boxes refitted to the masks."""
    height, width = F.get_size(image)
    # Masks are resized nearest-neighbour by their own kernel whatever ``interpolation`` says.
    image, target = _each(F.resize, image, target, size=list(size), interpolation=InterpolationMode.BILINEAR,
                          antialias=True)
    if "keypoints" in target:
        points = target["keypoints"].clone()
        points[..., 0] *= size[1] / width
        points[..., 1] *= size[0] / height
        target["keypoints"] = _hide_invisible(points)
    return image, _refit(target)


def _crop(image: tv_tensors.Image, target: Target, top: int, left: int, height: int,
          width: int) -> tuple[tv_tensors.Image, Target]:
    image, target = _each(F.crop, image, target, top=top, left=left, height=height, width=width)
    if "keypoints" in target:
        points = target["keypoints"].clone()
        points[..., 0] -= left
        points[..., 1] -= top
        inside = (points[..., 0] >= 0) & (points[..., 0] <= width) & (points[..., 1] >= 0) & (points[..., 1] <= height)
        points[..., 2] = torch.where(inside, points[..., 2], torch.zeros_like(points[..., 2]))
        target["keypoints"] = _hide_invisible(points)
    return image, _refit(target)


def _refit(target: Target) -> Target:
    """Make boxes and ``area`` agree with the masks again after a resample (resize or crop).

    Boxes are recomputed from the resized masks as their pixel extent (:func:`~segtune.data.boxes.mask_boxes`,
    the convention of every reader), as Detectron2 does after crops: a box scaled as numbers drifts
    from its nearest-neighbour-resized mask by up to the scale factor. ``area`` is recomputed because
    evaluation-style area filters and the copy-paste collate read it: mask pixels when there are
    masks, else the box area (the same definitions as ``DetectionDataset``). Instances whose mask is
    now empty get an all-zero box, which SanitizeBoundingBoxes then drops with their other fields.
    A flip moves no pixel count and maps a mask's extent onto the flipped mask's, so it keeps both.
    """
    boxes = target["boxes"]
    if "masks" in target:
        masks = target["masks"]
        target["boxes"] = tv_tensors.wrap(mask_boxes(masks).to(boxes.dtype), like=boxes)
        if "area" in target:
            target["area"] = mask_areas(masks)
    elif "area" in target:
        target["area"] = box_areas(boxes).to(torch.float32)
    return target


def _hide_invisible(points: torch.Tensor) -> torch.Tensor:
    """Zero the x, y of invisible points (COCO's convention for ``v = 0``)."""
    return points * (points[..., 2:3] > 0)
