"""collate and CopyPaste: batches as tuples; pasted instances replace pixels and occlude what was under them."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from segtune.config import DataConfig
from segtune.data.build import build_dataset, build_loader
from segtune.data.collate import CopyPaste, build_collate, collate
from segtune.data.boxes import mask_boxes
from segtune.errors import ConfigError


def _item(size: tuple[int, int], rects: list[tuple[int, int, int, int]], labels: list[int], value: float = 0.0,
          image_id: int = 0):
    """An (image, target) pair as the training transforms give it: float image, plain tensors."""
    h, w = size
    masks = torch.zeros((len(rects), h, w), dtype=torch.uint8)
    for i, (y0, y1, x0, x1) in enumerate(rects):
        masks[i, y0:y1, x0:x1] = 1
    return torch.full((3, h, w), value), {
        "boxes": mask_boxes(masks),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks,
        "area": masks.flatten(1).sum(1).float(),
        "iscrowd": torch.zeros(len(rects), dtype=torch.int64),
        "image_id": image_id,
    }


def _random_item(gen: torch.Generator, image_id: int):
    h, w = 32 + 8 * int(torch.randint(3, (), generator=gen)), 40
    rects = []
    for _ in range(int(torch.randint(1, 4, (), generator=gen))):
        y0, x0 = int(torch.randint(0, h - 10, (), generator=gen)), int(torch.randint(0, w - 10, (), generator=gen))
        rects.append((y0, y0 + 8, x0, x0 + 8))
    image, target = _item((h, w), rects, [1 + image_id] * len(rects), image_id=image_id)
    return torch.rand((3, h, w), generator=gen), target


def _check(image, target) -> None:
    _, h, w = image.shape
    n = len(target["boxes"])
    assert all(len(target[k]) == n for k in ("labels", "masks", "area", "iscrowd"))
    assert target["masks"].dtype == torch.uint8 and tuple(target["masks"].shape[1:]) == (h, w)
    if n:
        # exactly the masks' pixel extent (a flip keeps it too: x -> W - x maps extent onto extent)
        assert torch.equal(target["boxes"], mask_boxes(target["masks"]))
        assert ((target["boxes"][:, 2] > target["boxes"][:, 0]) & (target["boxes"][:, 3] > target["boxes"][:, 1])).all()
    assert torch.equal(target["area"], target["masks"].flatten(1).sum(1).float())


def test_paste_replaces_pixels_occludes_and_drops_covered_instances():
    # destination 48x64: d1 lies wholly under the pasted instance, d2 half under it
    dest = _item((48, 64), [(10, 20, 10, 20), (10, 20, 30, 50)], [1, 2], value=0.0, image_id=5)
    # source 24x32, resized x2 to the destination: its instance covers rows 8..24, columns 8..40
    src = _item((24, 32), [(4, 12, 4, 20)], [3], value=1.0, image_id=6)
    images, targets = CopyPaste(seed=0)([dest, src])

    image, target = images[0], targets[0]
    pasted = torch.zeros((48, 64), dtype=torch.bool)
    pasted[8:24, 8:40] = True
    assert torch.equal(image, torch.where(pasted, 1.0, 0.0).expand(3, -1, -1))
    assert target["labels"].tolist() == [2, 3]  # d1 (fully covered) is gone
    assert target["boxes"].tolist() == [[40.0, 10.0, 50.0, 20.0], [8.0, 8.0, 40.0, 24.0]]
    assert target["area"].tolist() == [100.0, 16.0 * 32.0]
    assert target["image_id"] == 5 and target["iscrowd"].tolist() == [0, 0]
    _check(image, target)

    # the other way round: some of the destination's instances, shrunk to 24x32, on the source image
    _check(images[1], targets[1])
    assert targets[1]["labels"][0] == 3 and len(targets[1]["labels"]) in (2, 3)
    assert not torch.equal(images[1], src[0])
    # the inputs are left as they were
    assert dest[1]["labels"].tolist() == [1, 2] and float(dest[0].max()) == 0.0


def test_copypaste_is_reproducible_with_a_seed():
    gen = torch.Generator().manual_seed(0)
    batch = [_random_item(gen, i) for i in range(4)]
    runs = [CopyPaste(seed=s)(batch) for s in (7, 7, 8)]
    for (images, targets) in runs:
        for image, target in zip(images, targets):
            _check(image, target)
    same = all(torch.equal(a, b) for a, b in zip(runs[0][0], runs[1][0]))
    same &= all(torch.equal(a[k], b[k]) for a, b in zip(runs[0][1], runs[1][1]) for k in ("boxes", "labels", "masks"))
    assert same
    assert not all(torch.equal(a, b) for a, b in zip(runs[0][0], runs[2][0]))
    # a pickled copy (as DataLoader workers get it) starts from the seed again
    again = pickle.loads(pickle.dumps(CopyPaste(seed=7)))(batch)
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0], again[0]))


def test_copypaste_refuses_box_only_and_keypoint_targets():
    image, target = _item((16, 16), [(2, 8, 2, 8)], [1])
    box_only = {k: v for k, v in target.items() if k != "masks"}
    with pytest.raises(ConfigError, match="needs instance masks"):
        CopyPaste()([(image, box_only), (image, box_only)])
    with pytest.raises(ConfigError, match="keypoint"):
        CopyPaste()([(image, {**target, "keypoints": torch.zeros((1, 3, 3))})] * 2)


def test_single_images_and_negatives_pass_through():
    one = _item((16, 16), [(2, 8, 2, 8)], [1])
    images, targets = CopyPaste(seed=0)([one])
    assert images[0] is one[0] and targets[0] is one[1]
    empty = _item((16, 16), [], [])
    images, targets = CopyPaste(seed=0)([empty, one])
    assert targets[0]["labels"].tolist() == [1]  # the negative received the other image's instance
    assert targets[1]["labels"].tolist() == [1] and torch.equal(images[1], one[0])  # nothing to paste from


def test_build_collate_and_loader(mask_folder: Path):
    assert build_collate(["hflip"]) is collate
    paste = build_collate(["hflip", "copypaste"], seed=3)
    assert isinstance(paste, CopyPaste) and paste.seed == 3
    dataset = build_dataset(DataConfig(path=str(mask_folder)), train=True, augment=["hflip", "copypaste"])
    loader = build_loader(dataset, batch_size=3, train=True, workers=0, collate_fn=paste,
                          generator=torch.Generator().manual_seed(0))
    images, targets = next(iter(loader))
    assert len(images) == 3
    for image, target in zip(images, targets):
        assert image.dtype == torch.float32
        _check(image, target)
