"""Owns batching for detection: images differ in size, so a batch is a tuple of lists; and copy-paste.

Copy-paste (Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation Method for Instance
Segmentation") mixes instances between images, so it runs on a whole batch, as the DataLoader's
``collate_fn``, after each image went through its own transforms.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from segtune.data.boxes import mask_areas, mask_boxes
from segtune.errors import ConfigError

Batch = list[tuple[Any, dict[str, Any]]]
#: The target entries that hold one row per instance (the ones copy-paste concatenates and filters).
INSTANCE_KEYS = ("boxes", "labels", "masks", "area", "iscrowd")


def collate(batch: Batch) -> tuple[tuple[Any, ...], tuple[dict[str, Any], ...]]:
    """``[(image, target), ...]`` -> ``((image, ...), (target, ...))``, as torchvision's detection models take them."""
    images, targets = zip(*batch)
    return images, targets


def build_collate(augment: Sequence[str], seed: int | None = None) -> Callable[[Batch], Any]:
    """The loader's ``collate_fn``: :class:`CopyPaste` when ``"copypaste"`` is in ``augment``, else :func:`collate`."""
    names = augment.split(",") if isinstance(augment, str) else augment
    return CopyPaste(seed=seed) if "copypaste" in [str(n).strip() for n in names] else collate


class CopyPaste:
    """Collate that pastes a random subset of another batch image's instances onto each image.

    For each image of the batch another image of the batch is picked; a random non-empty subset of its
    (non-crowd) instances is resized with it to the destination's size and pasted: their pixels replace
    the destination's, the destination's masks lose the pixels under them, and a destination instance
    left with fewer than ``min_visible`` of its pixels (or none) is dropped. Boxes are recomputed as
    the masks' pixel extent (:mod:`segtune.data.boxes`) and ``area`` as their pixel counts. A batch of one image passes
    through unchanged (the last batch of an epoch may be one image).

    Picklable, so DataLoader workers can run it. Randomness: with ``seed=None`` torch's global generator
    (which DataLoader seeds per worker and epoch); with a seed, a private generator seeded from it (in a
    worker, from it and the worker's seed, so workers and epochs differ but a seeded run repeats).

    Args:
        seed: seed of the private generator, or None.
        min_visible: fraction of its pixels a destination instance must keep to stay.

    Raises (when called):
        ConfigError: a target without masks (a box-only data set) or with keypoints.
    """

    def __init__(self, *, seed: int | None = None, min_visible: float = 0.01) -> None:
        self.seed = seed
        self.min_visible = min_visible
        self._generator: torch.Generator | None = None
        self._generator_key: tuple[int, int | None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Each process builds its own generator (see _rng), so a pickled copy starts fresh.
        return {**self.__dict__, "_generator": None, "_generator_key": None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, min_visible={self.min_visible})"

    def __call__(self, batch: Batch) -> tuple[tuple[Any, ...], tuple[dict[str, Any], ...]]:
        images, targets = collate(batch)
        for target in targets:
            _check_target(target)
        if len(images) < 2:
            return images, targets
        rng = self._rng()
        out_images, out_targets = [], []
        for i in range(len(images)):
            j = int(torch.randint(len(images) - 1, (), generator=rng))
            j += j >= i  # any image but i
            image, target = self._paste(images[i], targets[i], images[j], targets[j], rng)
            out_images.append(image)
            out_targets.append(target)
        return tuple(out_images), tuple(out_targets)

    def _rng(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        key = (os.getpid(), info.seed if info is not None else None)
        if self._generator is None or self._generator_key != key:
            seed = self.seed if info is None else (self.seed * 1_000_003 + info.seed) % (2**63)
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_key = key
        return self._generator

    def _paste(self, image: torch.Tensor, target: dict[str, Any], src_image: torch.Tensor, src: dict[str, Any],
               rng: torch.Generator | None) -> tuple[torch.Tensor, dict[str, Any]]:
        candidates = torch.arange(len(src["masks"]))
        if "iscrowd" in src:
            candidates = candidates[src["iscrowd"] == 0]
        if len(candidates) == 0:
            return image, target
        count = int(torch.randint(1, len(candidates) + 1, (), generator=rng))
        chosen = candidates[torch.randperm(len(candidates), generator=rng)[:count]].sort().values

        height, width = image.shape[-2:]
        pasted = src["masks"][chosen]
        if tuple(src_image.shape[-2:]) != (height, width):
            src_image = F.resize(src_image, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)
            pasted = F.resize(tv_tensors.Mask(pasted), [height, width]).as_subclass(torch.Tensor)  # nearest
        pasted = pasted.to(torch.uint8)
        # any() of uint8 is uint8; bool() makes it an index and ~ a logical not
        alive = pasted.flatten(1).any(1).bool()  # a small instance may vanish when the source is shrunk
        chosen, pasted = chosen[alive], pasted[alive]
        if len(chosen) == 0:
            return image, target

        cover = pasted.any(0).bool()
        image = torch.where(cover, src_image.to(image.dtype), image)
        masks = target["masks"].as_subclass(torch.Tensor)
        before = masks.flatten(1).sum(1)
        masks = masks * ~cover
        after = masks.flatten(1).sum(1)
        kept = (after > 0) & (after >= self.min_visible * before)

        n_src = len(chosen)
        merged = {
            "masks": torch.cat([masks[kept], pasted]).to(torch.uint8),
            "labels": torch.cat([target["labels"][kept], src["labels"][chosen]]),
            "iscrowd": torch.cat([_iscrowd(target)[kept], torch.zeros(n_src, dtype=torch.int64)]),
        }
        # Every instance left has pixels (kept ones have after > 0, pasted ones are alive), so its
        # pixel-extent box has positive width and height: nothing to drop.
        out = {k: v for k, v in target.items() if k not in INSTANCE_KEYS}
        out.update(merged)
        out["boxes"] = mask_boxes(merged["masks"])
        out["area"] = mask_areas(merged["masks"])
        return image, out


def _iscrowd(target: dict[str, Any]) -> torch.Tensor:
    return target["iscrowd"] if "iscrowd" in target else torch.zeros(len(target["labels"]), dtype=torch.int64)


def _check_target(target: dict[str, Any]) -> None:
    if "keypoints" in target:
        raise ConfigError("train.augment: 'copypaste' does not support keypoint data sets; remove it")
    if "masks" not in target:
        raise ConfigError("train.augment: 'copypaste' needs instance masks, but this data set has boxes only; "
                          "remove it")
