"""The data doctor reads images in parallel, gives the same report as one at a time, and does not check an
unchanged data set twice."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.config import DataConfig
from segtune.data import check as check_mod
from segtune.data import open_and_check
from tests.conftest import make_mask_folder


@pytest.fixture
def counted_scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    scan = check_mod._scan

    def counting(dataset, report, *, progress):
        calls.append(len(dataset))
        return scan(dataset, report, progress=progress)

    monkeypatch.setattr(check_mod, "_scan", counting)
    return calls


def _with_defects(root: Path) -> Path:
    make_mask_folder(root, n=9, empty=(0, 4))
    # Image 3's mask is the wrong size (an error); image 6 gets a 1-pixel object (a small-box warning).
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(root / "PedMasks" / "img003_mask.png")
    mask = np.array(Image.open(root / "PedMasks" / "img006_mask.png"))
    mask[0, 0] = 9
    Image.fromarray(mask).save(root / "PedMasks" / "img006_mask.png")
    return root


def test_parallel_chunks_give_the_one_at_a_time_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _with_defects(tmp_path / "d")
    cfg = DataConfig(path=str(root), check_cache=False)
    monkeypatch.setattr(check_mod, "scan_workers", lambda: 1)
    monkeypatch.setattr(check_mod, "_CHUNK", 1000)
    _, alone = open_and_check(cfg)
    monkeypatch.setattr(check_mod, "scan_workers", lambda: 3)  # forked worker processes, 2 images a chunk
    monkeypatch.setattr(check_mod, "_CHUNK", 2)
    monkeypatch.setattr(check_mod, "_PARALLEL_FROM", 1)
    _, parallel = open_and_check(cfg)
    assert alone.errors and alone.warnings
    assert dataclasses.asdict(parallel) == dataclasses.asdict(alone)


def test_an_unchanged_data_set_is_checked_once(tmp_path: Path, counted_scans: list[int]) -> None:
    root = _with_defects(tmp_path / "d")
    cfg = DataConfig(path=str(root))
    _, first = open_and_check(cfg)
    _, second = open_and_check(cfg)
    assert counted_scans == [9]  # the second came from the cache
    assert dataclasses.asdict(second) == dataclasses.asdict(first)
    # A changed file is checked again (its fix shows).
    Image.fromarray(np.zeros((72, 96), dtype=np.uint8)).save(root / "PedMasks" / "img003_mask.png")
    _, third = open_and_check(cfg)
    assert counted_scans == [9, 9] and len(third.errors) == len(first.errors) - 1
    # So is the same data set under other settings, and nothing is reused when asked.
    open_and_check(dataclasses.replace(cfg, min_box_size=5.0))
    open_and_check(dataclasses.replace(cfg, check_cache=False))
    assert counted_scans == [9, 9, 9, 9]


def test_a_cache_that_cannot_be_written_does_not_stop_the_check(tmp_path: Path, monkeypatch, counted_scans) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("SEGTUNE_CACHE_DIR", str(blocker))
    root = make_mask_folder(tmp_path / "d", n=3)
    _, report = open_and_check(DataConfig(path=str(root)))
    _, again = open_and_check(DataConfig(path=str(root)))
    assert report.images == 3 and again.images == 3 and counted_scans == [3, 3]


def test_the_report_is_kept_beside_the_data_and_replaced_when_it_changes(tmp_path: Path, monkeypatch,
                                                                         counted_scans) -> None:
    monkeypatch.delenv("SEGTUNE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    root = _with_defects(tmp_path / "d")
    cfg = DataConfig(path=str(root))
    open_and_check(cfg)
    kept = list((root / ".segtune").glob("check-*.json"))
    assert len(kept) == 1 and not (tmp_path / "user-cache").exists()
    # The folder is not data: the set still reads as 9 images, and its report comes from beside it.
    _, again = open_and_check(cfg)
    assert counted_scans == [9] and again.images == 9
    # A changed set is checked again and its report replaces the old one (same file, new key).
    before = kept[0].read_text()
    Image.fromarray(np.zeros((72, 96), dtype=np.uint8)).save(root / "PedMasks" / "img003_mask.png")
    open_and_check(cfg)
    assert counted_scans == [9, 9]
    assert list((root / ".segtune").glob("check-*.json")) == kept and kept[0].read_text() != before


def test_a_data_folder_that_cannot_be_written_keeps_the_report_in_the_users_cache(tmp_path: Path, monkeypatch,
                                                                                  counted_scans) -> None:
    monkeypatch.delenv("SEGTUNE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    root = make_mask_folder(tmp_path / "d", n=3)
    (root / ".segtune").write_text("not a folder")  # as a read-only data folder would, this refuses the write
    open_and_check(DataConfig(path=str(root)))
    _, again = open_and_check(DataConfig(path=str(root)))
    assert counted_scans == [3] and again.images == 3
    assert len(list((tmp_path / "user-cache" / "segtune" / "checks").glob("check-*.json"))) == 1


def test_an_annotation_files_report_goes_to_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from segtune.data.check_cache import check_folders

    (tmp_path / "ann.json").write_text("{}")
    monkeypatch.delenv("SEGTUNE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert check_folders(tmp_path / "ann.json") == [tmp_path / ".segtune", tmp_path / "c" / "segtune" / "checks"]
    monkeypatch.setenv("SEGTUNE_CACHE_DIR", str(tmp_path / "only"))
    assert check_folders(tmp_path / "ann.json") == [tmp_path / "only" / "checks"]
