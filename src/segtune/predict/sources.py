"""Owns where a prediction run's still images come from: files, folders and globs, or a run's split.

Videos are the other source, in :mod:`segtune.predict.video` (:class:`~segtune.predict.video.VideoStream`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator
from pathlib import Path

from segtune.checkpoint import checkpoint_data, load_checkpoint
from segtune.data import open_dataset
from segtune.errors import CheckpointError, DatasetError
from segtune.predict.pipeline import IMAGE, Item, Stream
from segtune.predict.predictor import to_uint8_chw
from segtune.machine import track
from segtune.runtimes import read_sidecar, runtime_for_suffix

logger = logging.getLogger(__name__)


def output_names(paths: list[Path]) -> list[str]:
    """An output name per input: its stem, made unique (``<stem>-2``, ...) when two inputs share a stem."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        names.append(p.stem if n == 0 else f"{p.stem}-{n + 1}")
    return names


class ImageStream(Stream):
    """The still images of a run, read one batch at a time so memory stays flat over thousands of them.

    An unreadable image is skipped with a warning and listed in ``skipped``.

    Args:
        paths: the image files; an image's ``image_id`` is its position here.
        batch_size: images per forward pass.
        skip: positions not to predict on (done by an earlier run into the same folder).
    """

    kind = IMAGE
    name = "images"

    def __init__(self, paths: list[Path], *, batch_size: int = 1, skip: Collection[int] = ()) -> None:
        self.paths = list(paths)
        self.names = output_names(self.paths)
        self.batch_size = max(1, int(batch_size))
        self.skip = set(skip)
        self.skipped: list[str] = []

    def batches(self) -> Iterator[list[Item]]:
        todo = [i for i in range(len(self.paths)) if i not in self.skip]
        batches = [todo[k:k + self.batch_size] for k in range(0, len(todo), self.batch_size)]
        for batch in track(batches, total=len(batches), desc="predict", every=max(1, len(batches) // 20)):
            items = []
            for i in batch:
                try:
                    image = to_uint8_chw(self.paths[i])
                except DatasetError as e:
                    logger.warning("predict: skipped %s (%s)", self.paths[i], e)
                    self.skipped.append(str(self.paths[i]))
                    continue
                items.append(Item(self.paths[i], i, self.names[i], image))
            if items:
                yield items


def split_images(checkpoint: str | os.PathLike, split: str, *, data: str | None = None) -> list[Path]:
    """The image files of a run's ``train`` or ``test`` split, in the split's order.

    The run's data set is opened as it was trained (any format), and each format says where its
    images are: a COCO ``file_name`` under its image root, a YOLO ``images/`` path, a mask folder's
    ``PNGImages/``, a LabelMe ``imagePath``.

    Args:
        checkpoint: a ``.pt`` file or a run folder (its ``weights/best.pt``).
        data: the data set, if it moved since training (default: the path in the checkpoint).

    Raises:
        CheckpointError: the checkpoint holds no such split. DatasetError: the data set cannot be read
            or lacks a file of the split.
    """
    if runtime_for_suffix(checkpoint):  # an exported model's split is its checkpoint's
        checkpoint = read_sidecar(checkpoint).get("checkpoint") or checkpoint
    ckpt = load_checkpoint(checkpoint)
    files = ckpt.get("split", {}).get(split)
    if files is None:
        raise CheckpointError(f"{ckpt['path']}: holds no '{split}' split (it has: "
                              f"{', '.join(sorted(ckpt.get('split', {}))) or 'none'})")
    dataset = open_dataset(checkpoint_data(ckpt, data, split), files=list(files))
    return [dataset.image_path(i) for i in range(len(dataset))]
