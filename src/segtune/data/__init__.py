"""Data sets, transforms, batching and splits. Imports only from segtune's bottom layer."""

from segtune.data.build import build_dataset, build_loader
from segtune.data.collate import collate
from segtune.data.masks_folder import MaskFolderDataset
from segtune.data.split import load_split, make_split, save_split
from segtune.data.transforms import build_transforms

__all__ = ["MaskFolderDataset", "build_dataset", "build_loader", "build_transforms", "collate", "load_split", "make_split", "save_split"]
