"""``segtune data show``: a PNG grid of images with their ground truth drawn on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.cli.main import main
from segtune.config import DataConfig
from segtune.data.masks_folder import MaskFolderDataset
from segtune.data.show import save_grid
from segtune.errors import ConfigError
from tests.conftest import make_mask_folder

GAP = 2  # make_grid padding between tiles


def _one_image(root: Path, side: int = 64) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir()
    image = np.full((side, side, 3), 90, np.uint8)
    rect = (16, 48, 12, 40)  # y0, y1, x0, x1
    mask = np.zeros((side, side), np.uint8)
    mask[rect[0]:rect[1], rect[2]:rect[3]] = 1
    Image.fromarray(image).save(root / "PNGImages" / "one.png")
    Image.fromarray(mask, mode="L").save(root / "PedMasks" / "one_mask.png")
    return image, rect


def test_masks_are_drawn_where_the_objects_are(tmp_path: Path):
    raw, (y0, y1, x0, x1) = _one_image(tmp_path / "d")
    out = save_grid(DataConfig(path=str(tmp_path / "d")), tmp_path / "grid.png", count=1, columns=1, tile_size=64)
    assert out == tmp_path / "grid.png"
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (64, 64, 3)  # make_grid gives a lone tile back without a border
    tile = grid.astype(int)
    # Inside the mask (bottom part, clear of the box outline and the label) the colour is blended in.
    inside = tile[y0 + 16:y1 - 2, x0 + 2:x1 - 2]
    assert (np.abs(inside - raw[y0 + 16:y1 - 2, x0 + 2:x1 - 2]).sum(axis=2) > 30).all()
    assert len({tuple(px) for px in inside.reshape(-1, 3)}) == 1  # one instance, one colour
    # Away from the object the tile is the image as it was.
    assert (tile[:, :x0 - 2] == raw[:, :x0 - 2]).all() and (tile[y1 + 2:] == raw[y1 + 2:]).all()


def test_grid_size_follows_count_columns_and_tile_size(tmp_path: Path):
    root = make_mask_folder(tmp_path / "d", n=6, size=(30, 50))
    out = save_grid(DataConfig(path=str(root)), tmp_path / "g.png", count=5, columns=2, tile_size=32)
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == (2 * (32 + GAP) + GAP, 3 * (32 + GAP) + GAP)
    # more images asked for than there are: all of them, one row
    out = save_grid(MaskFolderDataset(root), tmp_path / "all.png", count=50, columns=10, tile_size=16, seed=-1)
    with Image.open(out) as img:
        assert img.size == (6 * (16 + GAP) + GAP, 16 + 2 * GAP)


def test_seed_picks_the_images_reproducibly(tmp_path: Path):
    root = make_mask_folder(tmp_path / "d", n=8, size=(32, 32))
    a = save_grid(DataConfig(path=str(root)), tmp_path / "a.png", count=3, seed=1, tile_size=32).read_bytes()
    b = save_grid(DataConfig(path=str(root)), tmp_path / "b.png", count=3, seed=1, tile_size=32).read_bytes()
    c = save_grid(DataConfig(path=str(root)), tmp_path / "c.png", count=3, seed=2, tile_size=32).read_bytes()
    assert a == b and a != c
    save_grid(DataConfig(path=str(root)), tmp_path / "first.png", count=3, seed=-1, tile_size=32)
    first_grid = np.asarray(Image.open(tmp_path / "first.png"))
    expected = np.asarray(Image.open(root / "PNGImages" / "img000.png").convert("RGB"))
    assert (first_grid[GAP:GAP + 32, GAP:GAP + 32] == expected).all()  # img000 has no object: drawn as is


def test_unreadable_images_are_left_out(tmp_path: Path):
    root = make_mask_folder(tmp_path / "d", n=3, size=(32, 32))
    (root / "PNGImages" / "img001.png").write_text("not an image")
    out = save_grid(DataConfig(path=str(root)), tmp_path / "g.png", count=3, columns=3, tile_size=32)
    with Image.open(out) as img:
        assert img.size == (2 * (32 + GAP) + GAP, 32 + 2 * GAP)


def test_bad_arguments(tmp_path: Path):
    root = make_mask_folder(tmp_path / "d", n=2)
    with pytest.raises(ConfigError, match="--count"):
        save_grid(DataConfig(path=str(root)), tmp_path / "g.png", count=0)
    assert not (tmp_path / "g.png").exists()


def test_cli_writes_the_grid(tmp_path: Path, capsys):
    root = make_mask_folder(tmp_path / "d", n=5, size=(40, 60))
    out = tmp_path / "sub" / "grid.png"
    assert main(["data", "show", str(root), "--out", str(out), "--count", "4", "--columns", "2"]) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.size == (2 * (256 + GAP) + GAP, 2 * (256 + GAP) + GAP)
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically
