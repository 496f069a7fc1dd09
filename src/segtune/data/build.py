"""Owns turning a ``DataConfig`` section into data sets and loaders."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from segtune.config import resolve_data_path
from segtune.data.collate import collate
from segtune.data.masks_folder import MaskFolderDataset
from segtune.data.transforms import build_transforms


def build_dataset(data_cfg: Any, *, files: list[str] | None = None, train: bool = False,
                  hflip_prob: float = 0.5) -> MaskFolderDataset:
    return MaskFolderDataset(
        resolve_data_path(data_cfg.path),
        images_dir=data_cfg.images_dir,
        masks_dir=data_cfg.masks_dir,
        mask_suffix=data_cfg.mask_suffix,
        transforms=build_transforms(train=train, hflip_prob=hflip_prob),
        files=files,
    )


def build_loader(dataset: torch.utils.data.Dataset, *, batch_size: int, train: bool, workers: int,
                 generator: torch.Generator | None = None) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train, num_workers=workers, collate_fn=collate,
        generator=generator, persistent_workers=False,
    )
