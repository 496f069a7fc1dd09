"""A model family from outside segtune (tests/toy_model.py: a toy one-stage segmenter, not an R-CNN, registered
through the public registries only), trained, evaluated, predicted and exported with the ``segtune`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segtune.cli.main import main
from tests.toy_model import toy_registered, train_toy


@pytest.fixture
def toy():
    with toy_registered():
        yield


def test_a_toy_model_family_trains_evaluates_predicts_and_exports(toy, tmp_path: Path, capsys) -> None:
    data, run = train_toy(tmp_path)
    history = json.loads((run / "metrics.json").read_text())
    # It detects: the AP is real, not the 0 of a model that finds nothing.
    assert history[-1]["metrics"]["segm"]["AP"] > 0.3 and history[-1]["metrics"]["bbox"]["AP"] > 0.3
    capsys.readouterr()
    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval.json")]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert set(metrics) == {"bbox", "segm"} and metrics["segm"]["AP"] > 0.3

    preds = tmp_path / "preds"
    assert main(["predict", str(run), str(data / "PNGImages"), "--out", str(preds), "--save-masks"]) == 0
    results = json.loads((preds / "predictions.json").read_text())
    assert {Path(r["file_name"]).name for r in results} == {p.name for p in (data / "PNGImages").iterdir()}
    assert all(r["category_name"] == "box" and r["score"] >= 0.5 and r["segmentation"]["counts"] for r in results)
    assert len(list((preds / "masks").glob("*.png"))) == 8

    onnx = tmp_path / "toy.onnx"
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(onnx), "--exporter", "legacy"]) == 0
    printed = capsys.readouterr().out
    assert "parity passed" in printed
    meta = json.loads((tmp_path / "toy.onnx.json").read_text())
    assert meta["outputs"] == ["boxes", "labels", "scores", "masks"] and meta["model"] == "toy_segmenter"
    # The exported file predicts what the checkpoint does, masks included.
    assert main(["predict", str(onnx), str(data / "PNGImages"), "--out", str(tmp_path / "onnx-preds")]) == 0
    exported = json.loads((tmp_path / "onnx-preds" / "predictions.json").read_text())
    assert len(exported) == len(results) > 0
    assert all(r["segmentation"]["counts"] for r in exported)
