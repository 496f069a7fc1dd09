"""Owns the order images are batched in: aspect-ratio grouped batches that still show every image once an epoch.

Mask R-CNN pads every image of a batch to the largest one, so a batch that mixes a portrait and a
landscape image spends most of its pixels on padding. Grouping images by aspect ratio (torchvision's
reference recipe) avoids that. Unlike that recipe, nothing is dropped or repeated here: the images
left over in each group at the end of an epoch are batched together, neighbouring groups first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import BatchSampler, Sampler, SequentialSampler, Subset

from segtune.machine import track

logger = logging.getLogger(__name__)

# Reading image headers is fast, but on a 100k-image data set a progress line is welcome.
_PROGRESS_FROM = 2000


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of indices that share a group id, with every index of ``sampler`` in exactly one batch.

    Indices are taken in ``sampler``'s order; a group's batch is emitted as soon as it holds
    ``batch_size`` indices. When ``sampler`` is exhausted, the leftovers of all groups (each fewer
    than ``batch_size``) are laid out in group-id order and cut into batches, so a mixed batch joins
    neighbouring groups (close aspect ratios, when ids come from :func:`aspect_ratio_groups`).

    Because the leftovers are packed densely, an epoch has exactly ``ceil(len(sampler) / batch_size)``
    batches whatever order ``sampler`` gives, so ``len()`` is exact without drawing the order first.

    Args:
        sampler: yields data-set indices (e.g. ``RandomSampler`` or a ``DistributedSampler``).
        group_ids: ``group_ids[i]`` is the group of data-set index ``i``; any sortable ints.
        batch_size: indices per batch; only the last few batches of an epoch may be smaller.

    Raises:
        ValueError: ``batch_size`` is not positive.
    """

    def __init__(self, sampler: Iterable[int], group_ids: Sequence[int], batch_size: int) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.sampler = sampler
        self.group_ids = [int(g) for g in group_ids]
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        pending: dict[int, list[int]] = {}
        for index in self.sampler:
            bucket = pending.setdefault(self.group_ids[index], [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket
                pending[self.group_ids[index]] = []
        # Every leftover list is shorter than a batch; packing them in group order keeps each mixed
        # batch to neighbouring groups and makes the batch count independent of the drawn order.
        rest = [index for group in sorted(pending) for index in pending[group]]
        for start in range(0, len(rest), self.batch_size):
            yield rest[start:start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch to the underlying sampler (a ``DistributedSampler`` reshuffles with it)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class PlainBatchSampler(BatchSampler):
    """``BatchSampler(drop_last=False)`` that also forwards :meth:`set_epoch`, like the grouped one."""

    def __init__(self, sampler: Iterable[int], batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=False)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def _height_and_width(dataset: Any, index: int) -> tuple[int, int]:
    # A Subset (or a Subset of a Subset) maps its index to the data set that can read headers.
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    if not hasattr(dataset, "get_height_and_width"):
        raise TypeError(f"{type(dataset).__name__} has no get_height_and_width(index); aspect-ratio "
                        "grouping reads image sizes from file headers (use --aspect-ratio-group-factor -1)")
    return dataset.get_height_and_width(index)


def aspect_ratio_groups(dataset: Any, group_factor: int) -> list[int]:
    """Group id of each image of ``dataset`` by its width / height ratio, read from the file header only.

    The bin edges are ``2 ** linspace(-1, 1, 2 * group_factor + 1)``: ``group_factor`` log-spaced bins
    on each side of ratio 1 between 1/2 and 2, plus one open bin below 1/2 and one above 2
    (``2 * group_factor + 2`` groups; ``group_factor = 0`` just splits portrait from landscape).

    Args:
        dataset: has ``get_height_and_width(i) -> (height, width)`` (a ``Subset`` of one is fine).
        group_factor: bins per side of ratio 1, >= 0.

    Returns:
        ``len(dataset)`` ints, group ids ordered by aspect ratio (neighbouring ids are close ratios).
    """
    if group_factor < 0:
        raise ValueError(f"group_factor must be >= 0 to group by aspect ratio, got {group_factor}")
    # linspace of one point is its start (-1), so factor 0 needs its single edge, ratio 1, spelled out.
    edges = 2.0 ** np.linspace(-1, 1, 2 * group_factor + 1) if group_factor > 0 else np.array([1.0])
    n = len(dataset)
    indices: Iterable[int] = range(n)
    if n >= _PROGRESS_FROM:
        indices = track(indices, total=n, desc="reading image sizes", every=max(_PROGRESS_FROM, n // 5))
    ratios = np.empty(n, dtype=np.float64)
    for i in indices:
        height, width = _height_and_width(dataset, i)
        ratios[i] = width / height
    groups = np.digitize(ratios, edges, right=False)
    counts = np.bincount(groups, minlength=len(edges) + 1)
    logger.debug("aspect-ratio groups (edges %s): %s", np.round(edges, 3).tolist(), counts.tolist())
    return groups.tolist()


class RepeatSampler(Sampler[int]):
    """``sampler``'s order ``times`` times over: one epoch of small data holds several passes.

    Written here because torch has no such wrapper. A random sampler draws a new order each pass;
    a ``DistributedSampler`` gets epoch ``epoch * times + pass`` before each pass, so it reshuffles too.
    """

    def __init__(self, sampler: Sampler[int], times: int) -> None:
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        self.sampler, self.times, self.epoch = sampler, times, 0

    def __iter__(self) -> Iterator[int]:
        for rep in range(self.times):
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(self.epoch * self.times + rep)
            yield from self.sampler

    def __len__(self) -> int:
        return len(self.sampler) * self.times  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def make_batch_sampler(dataset: Any, *, batch_size: int, group_factor: int,
                       sampler: Sampler[int] | None = None) -> Sampler[list[int]]:
    """The batch sampler for ``dataset``: aspect-ratio grouped, or plain when ``group_factor < 0``.

    Either way no index is dropped (``drop_last=False``), so every image is seen once an epoch.

    Args:
        dataset: the data set ``sampler`` draws indices of.
        batch_size: images per batch.
        group_factor: see :func:`aspect_ratio_groups`; -1 (any negative) turns grouping off.
        sampler: the index order (a ``RandomSampler``, or a ``DistributedSampler`` for one rank);
            None = in order.

    Returns:
        A ``GroupedBatchSampler``, or a ``PlainBatchSampler`` when grouping is off; both have
        ``set_epoch(epoch)``, which the training loop calls each epoch for a ``DistributedSampler``.
    """
    if sampler is None:
        sampler = SequentialSampler(dataset)
    if group_factor < 0:
        return PlainBatchSampler(sampler, batch_size)
    return GroupedBatchSampler(sampler, aspect_ratio_groups(dataset, group_factor), batch_size)
