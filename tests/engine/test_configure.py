"""``segtune.configure``, the one way to resolve a config: presets, packaged and file configs, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segtune.checkpoint import save_checkpoint
from segtune.engine import configure
from segtune.errors import ConfigError


def test_a_packaged_config_is_read_by_name_and_flags_override_it() -> None:
    cfg = configure(config="tutorial_mobilenet_v2")
    assert (cfg.model.name, cfg.model.backbone) == ("fasterrcnn", "mobilenet_v2")
    cfg = configure(("flags", {"train.lr": 0.1}), config="tutorial_mobilenet_v2")
    assert cfg.model.backbone == "mobilenet_v2" and cfg.train.lr == 0.1


def test_a_config_file_sits_between_the_preset_and_the_flags(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": 0.02, "epochs": 4}}))
    cfg = configure(("flags", {"train.epochs": 7}), config=str(path))
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size) == (0.02, 7, 2)  # 2: the tutorial preset's
    with pytest.raises(ConfigError):
        configure(config=str(tmp_path / "missing-and-not-a-packaged-name"))


def test_resuming_from_python_takes_the_runs_own_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    earlier = configure(("earlier run", {"train.lr": 0.0123, "train.epochs": 5, "data.path": "somewhere"}))
    save_checkpoint(run / "weights" / "last.pt", {"model": {}, "classes": ["a"], "config": earlier.to_dict(),
                                                  "optimizer": {}, "scheduler": {}, "epoch": 1, "step": 3})
    cfg = configure(("me", {"train.resume": str(run)}))
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.path, cfg.train.resume) == (0.0123, 5, "somewhere", str(run))
    cfg = configure(("me", {"train.resume": str(run), "train.epochs": 8}))  # what is given here wins
    assert (cfg.train.lr, cfg.train.epochs) == (0.0123, 8)
