"""Owns turning a ``DataConfig`` section into data sets and loaders: format detection and dispatch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from segtune.config import resolve_data_path

# Importing each reader registers it in FORMATS (the decorator runs at import).
from segtune.data import coco, instance_pngs, labelme, masks_folder, yolo  # noqa: F401
from segtune.data.base import FORMATS, DetectionDataset, ProblemSink
from segtune.data.collate import collate
from segtune.data.samplers import RepeatSampler, make_batch_sampler
from segtune.data.transforms import build_transforms, scaled_sizes
from segtune.errors import ConfigError, DatasetError

#: The order formats are tried in when ``format`` is ``auto`` (most specific first).
DETECT_ORDER = ("coco", "yolo", "labelme", "instance-pngs", "masks")


def detect_format(path: str | Path, data_cfg: Any) -> str:
    """The format of the data at ``path`` (a folder or an annotation file), or a DatasetError."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: data path does not exist")
    for name in DETECT_ORDER:
        if name in FORMATS and FORMATS.get(name).detect(path, data_cfg):
            return name
    holds = ", ".join(sorted(p.name for p in path.iterdir() if not p.name.startswith("."))[:10]) if path.is_dir() else "a file"
    raise DatasetError(
        f"{path}: cannot tell the data format (it holds: {holds or 'nothing'}); expected one of "
        f"{', '.join(n for n in DETECT_ORDER if n in FORMATS)} (see docs/data-formats.md), or pass --format"
    )


def open_dataset(data_cfg: Any, *, files: list[str] | None = None, transforms: Any = None,
                 keep_crowd: bool = True, sink: ProblemSink | None = None) -> DetectionDataset:
    """Open the data set ``data_cfg`` describes, in its format (``data_cfg.format``, or detected)."""
    path = Path(resolve_data_path(data_cfg.path))
    name = data_cfg.format if data_cfg.format != "auto" else detect_format(path, data_cfg)
    cls = FORMATS.get(name)
    return cls(path, **cls.from_config(data_cfg, path), transforms=transforms, files=files,
               keep_crowd=keep_crowd, sink=sink, allow_outside_root=getattr(data_cfg, "allow_outside_root", False))


def build_dataset(data_cfg: Any, *, files: list[str] | None = None, train: bool = False,
                  augment: Sequence[str] = ("hflip",), hflip_prob: float = 0.5,
                  sink: ProblemSink | None = None, image_size: int | None = None,
                  lsj_scale: Sequence[float] | None = None) -> DetectionDataset:
    """Open the data set ``data_cfg`` describes and :func:`prepare` it for training or evaluation."""
    dataset = open_dataset(data_cfg, keep_crowd=not train, sink=sink)
    return prepare(dataset, files=files, train=train, augment=augment, hflip_prob=hflip_prob, image_size=image_size,
                   lsj_scale=lsj_scale)


def prepare(dataset: DetectionDataset, *, files: list[str] | None = None, train: bool = False,
            augment: Sequence[str] = ("hflip",), hflip_prob: float = 0.5, image_size: int | None = None,
            lsj_scale: Sequence[float] | None = None) -> DetectionDataset:
    """A view of an opened data set for training (augmented, crowd regions left out) or evaluation (as annotated).

    ``files`` selects the split (None: every image). ``augment`` names the presets of
    :func:`segtune.data.transforms.build_transforms` (used when ``train``). ``image_size`` is the
    model's input size (its shorter side, ``model.min_size``): the resampling presets work at that
    scale (``lsj`` on an ``image_size`` square, ``multiscale`` sizes scaled from the 800-px reference
    recipe), so small models do not pay for 1024-px crops; ``lsj_scale`` is ``lsj``'s scale range
    (default that of the papers, 0.1-2). Raises ConfigError when ``copypaste`` is asked of a data set
    without masks.
    """
    sizes: dict[str, Any] = {} if image_size is None else scaled_sizes(image_size)
    if lsj_scale is not None:
        sizes["lsj_scale"] = (float(lsj_scale[0]), float(lsj_scale[1]))
    transforms = build_transforms(train=train, augment=augment, hflip_prob=hflip_prob,
                                  keypoint_names=dataset.keypoint_names, **sizes)
    if train and "copypaste" in augment and not dataset.has_masks:
        raise ConfigError(f"{dataset.root}: train.augment 'copypaste' needs instance masks, but this data set "
                          "has boxes only; remove it")
    return dataset.view(files, transforms=transforms, keep_crowd=not train)


def build_loader(dataset: torch.utils.data.Dataset, *, batch_size: int, train: bool, workers: int,
                 generator: torch.Generator | None = None, aspect_ratio_group_factor: int = -1,
                 sampler: torch.utils.data.Sampler | None = None, repeat: int = 1,
                 collate_fn: Callable | None = None, worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
    """A loader of ``(images, targets)`` batches; every image comes once per epoch, none is dropped.

    Args:
        dataset: the data set to batch.
        batch_size: images per batch.
        train: shuffle (with ``generator``) and, when ``aspect_ratio_group_factor >= 0``, batch images
            of similar aspect ratio together (sizes read from file headers).
        workers: loader worker processes.
        generator: seeds the shuffle and the workers, for a reproducible order.
        aspect_ratio_group_factor: see :func:`segtune.data.samplers.aspect_ratio_groups`; -1 = off.
        sampler: the index order, e.g. a ``DistributedSampler`` for this rank; None = shuffled in
            training, in order otherwise. With a ``DistributedSampler``, call
            ``loader.batch_sampler.set_epoch(epoch)`` every epoch in training.
        repeat: training: passes over ``dataset`` per epoch (each in a new order).
        collate_fn: how a batch is put together, e.g. :func:`segtune.data.collate.build_collate`'s
            copy-paste; None = :func:`segtune.data.collate.collate`.
        worker_init_fn: seeds each worker process (see :func:`segtune.machine.seed_worker`).
    """
    collate_fn = collate if collate_fn is None else collate_fn
    if train:
        if sampler is None:
            sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
        if repeat > 1:
            sampler = RepeatSampler(sampler, repeat)
        batch_sampler = make_batch_sampler(dataset, batch_size=batch_size, group_factor=aspect_ratio_group_factor,
                                           sampler=sampler)
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate_fn,
                          generator=generator, worker_init_fn=worker_init_fn, persistent_workers=False)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
        generator=generator, worker_init_fn=worker_init_fn, persistent_workers=False,
    )


def build_loader_from_batches(template: DataLoader, batches: list[list[int]], generator: torch.Generator) -> DataLoader:
    """A loader over fixed ``batches`` of indices with ``template``'s data set, workers and collate
    (a resumed epoch skips the batches already done without loading them)."""
    return DataLoader(
        template.dataset, batch_sampler=batches, num_workers=template.num_workers, collate_fn=template.collate_fn,
        generator=generator, worker_init_fn=template.worker_init_fn, persistent_workers=False)
