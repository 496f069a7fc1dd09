"""Config tree: defaults are the tutorial, presets sit under user settings, bad keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from segtune.config import Config, build_config, dump_yaml, flatten, load_yaml, preset_layer
from segtune.engine import configure
from segtune.errors import ConfigError


def test_defaults_are_the_tutorial_recipe() -> None:
    cfg = Config()
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay) == (2, 0.005, 0.9, 5e-4)
    assert (cfg.train.lr_step, cfg.train.lr_gamma, cfg.train.epochs, cfg.train.hflip_prob) == (3, 0.1, 10, 0.5)
    assert cfg.model.name == "maskrcnn_resnet50_fpn" and cfg.model.weights == "DEFAULT"
    # The mask-folder layout is found (Penn-Fudan's: PNGImages, PedMasks, _mask; tests/data/test_mask_layouts.py);
    # the test split is a fifth of the images, at most 500, where the data set has none of its own.
    assert (cfg.data.images_dir, cfg.data.masks_dir, cfg.data.mask_suffix) == ("auto", "auto", "auto")
    assert (cfg.data.test_size, cfg.data.test_max) == (0.2, 500)


def test_user_settings_win_over_the_preset() -> None:
    cfg = configure(("command line", {"train.preset": "cpu-quick", "train.epochs": 7}))
    assert cfg.train.preset == "cpu-quick" and cfg.train.epochs == 7
    assert cfg.model.weights == "none" and cfg.model.min_size == 320  # from the preset


def test_auto_preset_falls_back_to_the_cpu_recipes_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import urllib.error

    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with caplog.at_level("WARNING", logger="segtune"):
        cfg = configure(("command line", {"train.preset": "auto"}))
    assert cfg.train.preset == "cpu-scratch" and cfg.model.name == "maskrcnn" and cfg.model.backbone == "resnet18"
    assert "preset auto -> cpu-scratch" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="segtune"):  # a model the user names keeps its name: a short schedule
        cfg = configure(("command line", {"train.preset": "auto", "model.name": "maskrcnn_resnet50_fpn"}))
    assert cfg.train.preset == "cpu-quick" and cfg.model.name == "maskrcnn_resnet50_fpn"
    assert "preset auto -> cpu-quick" in caplog.text


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = build_config(preset_layer("cpu-quick"), ("cli", {"data.classes": "a,b", "train.lr": 1}))
    assert cfg.data.classes == ["a", "b"] and cfg.train.lr == 1.0
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    again = build_config((str(path), flatten(load_yaml(path))))
    assert again == cfg


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"train.lr": "fast"}, "train.lr: expected a number, got 'fast'"),
        ({"train.epochs": 1.5}, "train.epochs: expected an integer"),
        ({"train.epoch": 3}, "did you mean 'epochs'"),
        ({"optim.lr": 3}, "'optim.lr' is not a config key"),
        ({"train.epochs": 0}, "train.epochs must be at least 1"),
        ({"model.norm": "layer"}, "model.norm"),
    ],
)
def test_bad_values_name_the_source_and_key(layer: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        build_config(("my.yaml", layer))
    assert message in str(info.value)


def test_bad_yaml_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_none_on_the_command_line_clears_an_optional_setting() -> None:
    cfg = build_config(("command line", {"data.test_max": "none", "model.backbone": "None"}))
    assert cfg.data.test_max is None and cfg.model.backbone is None
    assert build_config(("command line", {"model.weights": "none"})).model.weights == "none"  # a value of its own
