"""make_split / save_split / load_split: seeded, sized as asked, round-trips, bad files named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from segtune.data.split import load_split, make_split, save_split
from segtune.errors import DatasetError

FILES = [f"img{i:03d}.png" for i in range(20)]


def _check_partition(split: dict[str, list[str]], files: list[str]) -> None:
    assert set(split) == {"train", "test"}
    assert not set(split["train"]) & set(split["test"])
    assert sorted(split["train"] + split["test"]) == sorted(files)
    assert split["train"] == sorted(split["train"]) and split["test"] == sorted(split["test"])


def test_same_seed_same_split():
    a = make_split(FILES, 5, seed=0)
    b = make_split(FILES, 5, seed=0)
    assert a == b
    _check_partition(a, FILES)
    # the input order does not matter, only the set of names and the seed
    assert make_split(list(reversed(FILES)), 5, seed=0) == a


def test_other_seed_other_split():
    splits = {tuple(make_split(FILES, 5, seed=s)["test"]) for s in range(5)}
    assert len(splits) > 1
    assert make_split(FILES, 5, seed=0) != make_split(FILES, 5, seed=1)


def test_test_count_respected():
    for count in (1, 5, 19):
        split = make_split(FILES, count, seed=3)
        _check_partition(split, FILES)
        assert len(split["test"]) == count and len(split["train"]) == 20 - count


def test_fraction():
    split = make_split(FILES, 0.25, seed=0)
    _check_partition(split, FILES)
    assert len(split["test"]) == 5 and len(split["train"]) == 15
    assert len(make_split(FILES[:8], 0.25, seed=0)["test"]) == 2
    assert len(make_split(FILES[:3], 0.1, seed=0)["test"]) == 1  # never an empty test set


@pytest.fixture
def split_caplog(caplog, monkeypatch):
    parent = logging.getLogger("segtune")
    monkeypatch.setattr(parent, "propagate", True)  # the CLI turns propagation off
    monkeypatch.setattr(parent, "handlers", [])
    caplog.set_level(logging.WARNING, logger="segtune.data.split")
    return caplog


@pytest.mark.parametrize("n, test_size, expected", [(6, 50, 1), (10, 10, 2), (10, 12, 2), (20, 20, 4), (2, 5, 1)])
def test_test_size_too_big_falls_back_to_20_percent(split_caplog, n, test_size, expected):
    files = FILES[:n]
    split = make_split(files, test_size, seed=0)
    _check_partition(split, files)
    assert len(split["test"]) == expected and len(split["train"]) == n - expected
    warnings = [r for r in split_caplog.records if r.name == "segtune.data.split" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"using {expected} test images" in warnings[0].getMessage()


def test_no_warning_when_test_size_fits(split_caplog):
    make_split(FILES, 5, seed=0)
    assert not [r for r in split_caplog.records if r.name == "segtune.data.split"]


@pytest.mark.parametrize("files", [[], ["only.png"]])
def test_too_few_files(files):
    with pytest.raises(DatasetError, match=f"{len(files)} image"):
        make_split(files, 0.2, seed=0)


def test_save_and_load_round_trip(tmp_path: Path):
    split = make_split(FILES, 4, seed=7)
    path = tmp_path / "run" / "split.json"
    save_split(path, split)
    assert json.loads(path.read_text(encoding="utf-8")) == split
    assert load_split(path) == split
    assert not [p for p in path.parent.iterdir() if p.name != "split.json"]  # no temp file left


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "'train' and 'test'"),
        ('{"train": ["a.png"]}', "'train' and 'test'"),
        ('{"train": "a.png", "test": []}', "'train' and 'test'"),
    ],
)
def test_load_bad_split_file(tmp_path: Path, content: str, words: str):
    path = tmp_path / "split.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as e:
        load_split(path)
    assert str(path) in str(e.value) and words in str(e.value)


def test_load_missing_split_file(tmp_path: Path):
    path = tmp_path / "missing.json"
    with pytest.raises(DatasetError) as e:
        load_split(path)
    assert str(path) in str(e.value) and "not found" in str(e.value)
