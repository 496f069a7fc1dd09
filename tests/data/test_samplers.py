"""Aspect-ratio grouped batches: every image once per epoch, grouped where possible, header-only sizes, DDP seam."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.ImageFile
import pytest
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler, SequentialSampler, Subset

from segtune.data.build import build_loader
from segtune.data.masks_folder import MaskFolderDataset
from segtune.data.samplers import GroupedBatchSampler, aspect_ratio_groups, make_batch_sampler


class SizesOnly(torch.utils.data.Dataset):
    """A data set that knows its image sizes but fails if anything tries to read an image."""

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        return self.sizes[index]

    def __getitem__(self, index: int):
        raise AssertionError("the sampler must not load images")


def _mixed_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """Portrait, square and landscape sizes in random order."""
    rng = np.random.default_rng(seed)
    shapes = [(60, 20), (40, 40), (20, 60), (30, 45), (45, 30)]
    return [shapes[int(k)] for k in rng.integers(0, len(shapes), size=n)]


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


# ---------------------------------------------------------------- every index exactly once


@pytest.mark.parametrize("n", [1, 2, 5, 7, 16, 23, 64])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 8])
def test_every_index_exactly_once_and_len_is_exact(n: int, batch_size: int):
    dataset = SizesOnly(_mixed_sizes(n, seed=n))
    sampler = make_batch_sampler(dataset, batch_size=batch_size, group_factor=3,
                                 sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(n)))
    assert isinstance(sampler, GroupedBatchSampler)
    for _ in range(2):  # two epochs: a fresh order each time, still every index once
        batches = list(sampler)
        assert sorted(_flat(batches)) == list(range(n))
        assert len(batches) == len(sampler) == math.ceil(n / batch_size)
        assert all(1 <= len(b) <= batch_size for b in batches)
        assert sum(len(b) < batch_size for b in batches) <= 1  # leftovers are packed: one short batch at most


def test_full_batches_share_a_group_and_mixed_ones_join_neighbours():
    # Groups 0..3 hold 9, 4, 6 and 3 images; with batches of 4: 2 + 1 + 1 + 0 homogeneous batches,
    # then the leftovers 1 (g0), 2 (g2), 3 (g3) are packed in group order.
    group_ids = [0] * 9 + [1] * 4 + [2] * 6 + [3] * 3
    order = torch.randperm(len(group_ids), generator=torch.Generator().manual_seed(1)).tolist()
    batches = list(GroupedBatchSampler(order, group_ids, batch_size=4))
    assert sorted(_flat(batches)) == list(range(len(group_ids)))
    groups = [[group_ids[i] for i in b] for b in batches]
    homogeneous = [g for g in groups if len(set(g)) == 1 and len(g) == 4]
    assert Counter(g[0] for g in homogeneous) == {0: 2, 1: 1, 2: 1}
    tail = groups[len(homogeneous):]  # the mixed batches come after every full single-group one
    assert [g for b in tail for g in b] == [0, 2, 2, 3, 3, 3]
    assert tail == [[0, 2, 2, 3], [3, 3]]


def test_groups_whose_sizes_divide_the_batch_give_only_homogeneous_batches():
    dataset = SizesOnly([(20, 60)] * 6 + [(60, 20)] * 9 + [(40, 40)] * 3)
    sampler = make_batch_sampler(dataset, batch_size=3, group_factor=3,
                                 sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(0)))
    ratios = [w / h for h, w in dataset.sizes]
    for batch in sampler:
        assert len({ratios[i] for i in batch}) == 1, batch


def test_batches_follow_the_underlying_sampler_order():
    group_ids = [0, 1, 0, 1, 0, 1, 0, 1]
    batches = list(GroupedBatchSampler(range(8), group_ids, batch_size=2))
    assert batches == [[0, 2], [1, 3], [4, 6], [5, 7]]


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        GroupedBatchSampler(range(3), [0, 0, 0], batch_size=0)


# ---------------------------------------------------------------- aspect-ratio bins


def test_aspect_ratio_bins_are_log_spaced_and_ordered():
    ratios = [0.25, 0.5, 0.9, 1.0, 1.1, 1.9, 2.0, 4.0]
    dataset = SizesOnly([(100, round(100 * r)) for r in ratios])
    # factor 0: portrait vs landscape; factor 1: edges 1/2, 1, 2.
    assert aspect_ratio_groups(dataset, 0) == [0, 0, 0, 1, 1, 1, 1, 1]
    assert aspect_ratio_groups(dataset, 1) == [0, 1, 1, 2, 2, 2, 3, 3]
    groups = aspect_ratio_groups(dataset, 3)
    assert groups == sorted(groups) and len(set(groups)) > len(set(aspect_ratio_groups(dataset, 1)))
    assert max(groups) <= 2 * 3 + 1


def test_negative_group_factor_gives_plain_batches_without_reading_sizes():
    dataset = SizesOnly([(10, 10)] * 5)
    dataset.get_height_and_width = None  # type: ignore[assignment]  # must not be needed
    sampler = make_batch_sampler(dataset, batch_size=2, group_factor=-1, sampler=SequentialSampler(dataset))
    assert isinstance(sampler, BatchSampler) and not sampler.drop_last
    assert list(sampler) == [[0, 1], [2, 3], [4]] and len(sampler) == 3


def test_group_sizes_are_read_from_headers_without_decoding(tmp_path: Path, monkeypatch):
    root = tmp_path / "d"
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir()
    sizes = {"a_tall.png": (48, 16), "b_wide.png": (16, 48), "c_square.png": (24, 24), "d_tall.png": (40, 20)}
    for name, (h, w) in sizes.items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "PNGImages" / name)
        mask = np.zeros((h, w), np.uint8)
        mask[2:8, 2:8] = 1
        Image.fromarray(mask, mode="L").save(root / "PedMasks" / name.replace(".png", "_mask.png"))
    ds = MaskFolderDataset(root)

    def no_decode(*args, **kwargs):
        raise RuntimeError("pixels decoded")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decode)
    monkeypatch.setattr(MaskFolderDataset, "load", no_decode)
    groups = aspect_ratio_groups(ds, 3)
    by_name = dict(zip(ds.files, groups))
    assert by_name["a_tall.png"] < by_name["d_tall.png"] < by_name["c_square.png"] < by_name["b_wide.png"]
    sampler = make_batch_sampler(ds, batch_size=2, group_factor=3, sampler=SequentialSampler(ds))
    assert sorted(_flat(list(sampler))) == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="pixels decoded"):  # the patch is really in effect
        ds[0]


def test_subset_sizes_come_from_the_wrapped_data_set():
    base = SizesOnly([(10, 40), (40, 10), (10, 40), (40, 10)])
    subset = Subset(base, [1, 2])
    assert aspect_ratio_groups(subset, 1) == [0, 3]


# ---------------------------------------------------------------- distributed seam


@pytest.mark.parametrize("n,batch_size", [(23, 2), (16, 4), (9, 3)])
def test_works_with_a_distributed_sampler(n: int, batch_size: int):
    dataset = SizesOnly(_mixed_sizes(n, seed=3))
    seen: list[int] = []
    orders = []
    for rank in (0, 1):
        dist = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=7)
        sampler = make_batch_sampler(dataset, batch_size=batch_size, group_factor=3, sampler=dist)
        epochs = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)  # forwarded: the DistributedSampler reshuffles per epoch
            assert dist.epoch == epoch
            batches = list(sampler)
            # this rank's batches hold exactly the indices its DistributedSampler gave (padding included)
            assert Counter(_flat(batches)) == Counter(list(dist))
            assert len(batches) == len(sampler) == math.ceil(len(dist) / batch_size)
            epochs.append(batches)
        assert epochs[0] != epochs[1]
        orders.append(epochs[0])
        seen += _flat(epochs[0])
    assert set(seen) == set(range(n))  # the ranks together cover the data set every epoch
    assert len(seen) == 2 * math.ceil(n / 2)


def test_plain_batches_forward_set_epoch_too():
    dataset = SizesOnly([(10, 10)] * 6)
    dist = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True)
    sampler = make_batch_sampler(dataset, batch_size=2, group_factor=-1, sampler=dist)
    sampler.set_epoch(4)
    assert dist.epoch == 4


# ---------------------------------------------------------------- the training loader


def _folder(root: Path, shapes: list[tuple[int, int]]) -> Path:
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir()
    for i, (h, w) in enumerate(shapes):
        Image.fromarray(np.full((h, w, 3), i, np.uint8)).save(root / "PNGImages" / f"im{i:02d}.png")
        mask = np.zeros((h, w), np.uint8)
        mask[1:6, 1:6] = 1
        Image.fromarray(mask, mode="L").save(root / "PedMasks" / f"im{i:02d}_mask.png")
    return root


def test_training_loader_groups_by_orientation_and_shows_every_image(tmp_path: Path):
    shapes = [(16, 40), (40, 16)] * 5 + [(16, 40)]  # 6 landscape, 5 portrait
    ds = MaskFolderDataset(_folder(tmp_path / "d", shapes))
    loader = build_loader(ds, batch_size=2, train=True, workers=0, generator=torch.Generator().manual_seed(0),
                          aspect_ratio_group_factor=0)
    assert len(loader) == 6
    ids, mixed = [], 0
    for images, targets in loader:
        ids += [t["image_id"] for t in targets]
        mixed += len({img.shape[1] > img.shape[2] for img in images}) > 1
    assert sorted(ids) == list(range(11))
    assert mixed <= 1  # only the leftover batch (one portrait + one landscape) may mix


def test_training_loader_order_is_reproducible_and_plain_when_off(tmp_path: Path):
    ds = MaskFolderDataset(_folder(tmp_path / "d", [(16, 16)] * 5))

    def order(factor: int) -> list[list[int]]:
        loader = build_loader(ds, batch_size=2, train=True, workers=0, generator=torch.Generator().manual_seed(3),
                              aspect_ratio_group_factor=factor)
        return [[t["image_id"] for t in targets] for _, targets in loader]

    first = order(3)
    assert first == order(3)
    assert sorted(_flat(first)) == list(range(5)) and len(first) == 3
    plain = order(-1)  # same images, same shuffle: grouping all-square images changes nothing
    assert plain == first


def test_evaluation_loader_keeps_order_and_accepts_a_sampler(tmp_path: Path):
    ds = MaskFolderDataset(_folder(tmp_path / "d", [(16, 16)] * 5))
    loader = build_loader(ds, batch_size=2, train=False, workers=0)
    assert [[t["image_id"] for t in targets] for _, targets in loader] == [[0, 1], [2, 3], [4]]
    dist = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False)
    loader = build_loader(ds, batch_size=2, train=False, workers=0, sampler=dist)
    assert [[t["image_id"] for t in targets] for _, targets in loader] == [[1, 3], [0]]
