"""Data sets in several formats, checks, transforms, batching and splits. Imports only from segtune's bottom layer."""

from segtune.data.base import FORMATS, DetectionDataset, Instances, Problem, ProblemSink
from segtune.data.build import build_dataset, build_loader, detect_format, open_dataset, prepare
from segtune.data.check import CheckReport, check_dataset, check_opened, open_and_check, raise_on_errors
from segtune.data.coco import CocoDataset
from segtune.data.collate import CopyPaste, build_collate, collate
from segtune.data.convert import convert_to_coco, to_coco
from segtune.data.labelme import LabelmeDataset
from segtune.data.instance_pngs import InstancePngDataset
from segtune.data.masks_folder import MaskFolderDataset
from segtune.data.samplers import GroupedBatchSampler, make_batch_sampler
from segtune.data.show import save_grid
from segtune.data.split import load_split, make_split, save_split
from segtune.data.transforms import build_transforms
from segtune.data.yolo import YoloDataset

__all__ = [
    "FORMATS", "CheckReport", "CocoDataset", "CopyPaste", "DetectionDataset", "GroupedBatchSampler", "Instances",
    "InstancePngDataset", "LabelmeDataset", "MaskFolderDataset", "Problem", "ProblemSink", "YoloDataset", "build_collate", "build_dataset",
    "build_loader", "build_transforms", "check_dataset", "check_opened", "collate", "convert_to_coco", "detect_format",
    "load_split", "make_batch_sampler", "make_split", "open_and_check", "open_dataset", "prepare", "raise_on_errors", "save_grid", "save_split",
    "to_coco",
]
