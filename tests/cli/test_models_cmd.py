"""``segtune models``: every registered model with its task, size and weights, as a table or JSON."""

from __future__ import annotations

import json
import os

import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights

from segtune.cli.main import main
from segtune.models import MODELS


def test_table_lists_every_model_with_its_task(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "task", "params"]
    for name in MODELS.names():
        row = next((line for line in lines if line.split()[:1] == [name]), None)
        assert row is not None, name
        assert row.split()[1] == MODELS.get(name).task
    mask = next(line for line in lines if line.startswith("maskrcnn_resnet50_fpn "))
    assert "44.4M" in mask and "COCO_V1 (DEFAULT)" in mask and "box AP 37.9, mask AP 34.6" in mask
    assert "not cached" in mask
    keypoint = [line for line in lines if "keypoint AP" in line]
    assert len(keypoint) == 2  # COCO_LEGACY and COCO_V1
    assert any(str(tmp_path / "hub" / "checkpoints") in line for line in lines)


def test_json_parses_and_matches_torchvision_meta(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # One weights file in the cache: reported as cached, the others not.
    cached = get_model_weights("fcos_resnet50_fpn").COCO_V1
    target = tmp_path / "hub" / "checkpoints" / os.path.basename(cached.url)
    target.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, target)
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        resnet = torchvision.models.resnet50()
    resnet50_bn_params = sum(p.numel() for m in resnet.modules() if isinstance(m, nn.BatchNorm2d)
                             for p in m.parameters())
    assert [r["name"] for r in rows] == MODELS.names()
    by_name = {r["name"]: r for r in rows}
    for name, row in by_name.items():
        spec = MODELS.get(name)
        assert row["task"] == spec.task and row["description"] == spec.description
        if spec.weights_name is None:
            assert row["weights"] == []
            continue
        entries = list(get_model_weights(spec.weights_name))
        assert [w["name"] for w in row["weights"]] == [e.name for e in entries]
        default = get_model_weights(spec.weights_name).DEFAULT
        assert [w["default"] for w in row["weights"]] == [e is default for e in entries]
        # Built as pretrained (COCO heads): torchvision's own parameter count, except that the v2 models'
        # ResNet keeps frozen BatchNorm here (model.norm auto), whose scale and shift are no parameters.
        expected = default.meta["num_params"] - (resnet50_bn_params if name.endswith("_v2") else 0)
        assert all(w["model"] == spec.weights_name for w in row["weights"])
        if spec.weights_name == name:
            assert row["parameters"] == expected, name
        for w in row["weights"]:
            assert w["metrics"]["box_map"] > 0
            assert w["cached"] == (w["file"] == str(target))
    assert by_name["fcos_resnet50_fpn"]["weights"][0]["cached"] is True
    assert by_name["keypointrcnn_resnet50_fpn"]["weights"][1]["metrics"] == {"box_map": 54.6, "kp_map": 65.0}
    assert not any(tmp_path.rglob("*.pth.*"))  # nothing downloaded or half-written


def test_train_with_an_unknown_model_names_the_valid_ones(tmp_path, mask_folder, capsys) -> None:
    from segtune.cli.main import main

    code = main(["train", "--data", str(mask_folder), "--out", str(tmp_path / "run"), "--model", "yolo",
                 "--weights", "none", "--weights-backbone", "none"])
    assert code == 2
    err = capsys.readouterr().err
    assert "model 'yolo' is not registered; choose one of:" in err and "fasterrcnn_resnet50_fpn" in err
    assert not (tmp_path / "run").exists()
