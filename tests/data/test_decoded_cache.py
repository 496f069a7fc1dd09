"""The decoded-image cache: each image decoded once (RAM, or files shared by workers and runs), shrunk to the
size the model uses, within its memory cap, decoded again when its file changes; a training run uses it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from segtune.cli.main import main
from segtune.config import DataConfig
from segtune.data import open_dataset
from segtune.data.decoded_cache import DecodedCache, resolve_mode
from tests.conftest import make_mask_folder


@pytest.fixture
def dataset(tmp_path: Path):
    ds = open_dataset(DataConfig(path=str(make_mask_folder(tmp_path / "data", n=4, size=(80, 120)))))
    calls: list[int] = []
    decode = ds.decode
    ds.decode = lambda i: calls.append(i) or decode(i)  # counts what is really decoded
    return ds, calls


def test_ram_decodes_each_image_once_and_gives_the_same_sample(dataset) -> None:
    ds, calls = dataset
    plain = [ds[i] for i in range(len(ds))]
    ds.decoded_cache = DecodedCache("ram")
    for _ in range(3):  # three epochs
        for i in range(len(ds)):
            image, target = ds[i]
            assert torch.equal(image, plain[i][0]) and torch.equal(target["masks"], plain[i][1]["masks"])
            target["boxes"] = None  # what a transform does to its dict must not reach the cache
    assert calls.count(0) == 2  # once for `plain`, once for the cache; never again
    assert ds.decoded_cache.hits == 8 and ds.decoded_cache.misses == 4
    assert ds.view(None).decoded_cache is None  # another view (e.g. evaluation's) does not share it


def test_images_are_shrunk_to_the_size_the_model_uses(dataset) -> None:
    ds, _ = dataset
    full_image, full = ds[1]
    ds.decoded_cache = DecodedCache("ram", max_side=60)
    image, target = ds[1]
    assert image.shape[-2:] == (40, 60) and target["masks"].shape[-2:] == (40, 60)
    assert target["boxes"].canvas_size == (40, 60)
    torch.testing.assert_close(target["boxes"].float(), full["boxes"].float() / 2, atol=2.0, rtol=0)  # refitted to nearest-resized masks
    assert full_image.shape[-2:] == (80, 120)


def test_the_ram_cap_holds(dataset) -> None:
    ds, calls = dataset
    ds.decoded_cache = DecodedCache("ram", max_bytes=80 * 120 * 3 + 80 * 120 * 4)  # about one image
    for _ in range(2):
        for i in range(len(ds)):
            ds[i]
    assert ds.decoded_cache.bytes <= ds.decoded_cache.max_bytes
    assert len(calls) >= 7  # at most one image kept: the rest decoded both times


def test_disk_is_shared_by_a_later_process_and_redone_when_a_file_changes(dataset, tmp_path: Path) -> None:
    ds, calls = dataset
    ds.decoded_cache = DecodedCache("disk", folder=tmp_path / "decoded")
    first = [ds[i] for i in range(len(ds))]
    assert len(list((tmp_path / "decoded").glob("*.pt"))) == 4 and len(calls) == 4
    ds.decoded_cache = DecodedCache("disk", folder=tmp_path / "decoded")  # another worker, or the next run
    again = [ds[i] for i in range(len(ds))]
    assert len(calls) == 4  # nothing decoded
    for (a, ta), (b, tb) in zip(first, again):
        assert torch.equal(a, b) and torch.equal(ta["masks"], tb["masks"]) and torch.equal(ta["boxes"], tb["boxes"])
        assert type(b).__name__ == "Image" and tb["boxes"].canvas_size == ta["boxes"].canvas_size
    path = ds.image_path(2)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    ds[2]
    assert calls[-1] == 2 and len(calls) == 5


def test_auto_is_ram_without_workers_and_a_bad_mode_is_named() -> None:
    assert resolve_mode("auto", 0) == "ram" and resolve_mode("auto", 4) == "none"
    with pytest.raises(Exception, match="--cache 'fast'"):
        resolve_mode("fast", 0)


def test_a_training_run_says_which_cache_it_uses(tmp_path: Path, caplog) -> None:
    data = make_mask_folder(tmp_path / "data", n=5)
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2",
                 "--max-iters-per-epoch", "2", "--val-loss", "false", "--weights", "none", "--weights-backbone", "none", "--min-size", "64",
                 "--max-size", "96", "--test-size", "1", "--cache", "ram", "--cache-max-gb", "0.5"])
    assert code == 0
    log = (tmp_path / "run" / "train.log").read_text()
    said = re.search(r"decoded-image cache: ram, images shrunk to at most (\d+) px on their longer side, up to 0.5 GB",
                     log)
    # --max-size 96, and the default augmentation (hflip) does not scale images up: training uses at most 96 px
    # on the longer side. The cache keeps at least that (else the model would see images the cache blurred) and
    # at most a pixel of margin more (else it keeps pixels nothing uses).
    assert said and 96 <= int(said.group(1)) <= 97
    assert "% of it waiting for data)" in log  # the data-time share of the epoch
