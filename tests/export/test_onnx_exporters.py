"""``segtune export --exporter auto | dynamo`` and ``--opset`` through the command line: the dynamo exporter kept
where it works (a file of any image size), the TorchScript-based one used with a note where it does not, and
``--exporter dynamo`` refused in one line where it fails (issue #37: paths no test drove)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.cli.main import main
from tests.detector import Detector
from tests.toy_model import ToySegmenter, toy_registered, train_toy


@pytest.fixture
def branchy_toy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy model with a Python branch on its input's values: torch's dynamo exporter cannot export it (a
    guard on a data-dependent value), the TorchScript-based exporter traces the branch taken."""
    plain = ToySegmenter._logits

    def logits(self, image):
        if image.mean() < 0:  # never true for an image, but dynamo must guard on it
            image = -image
        return plain(self, image)

    monkeypatch.setattr(ToySegmenter, "_logits", logits)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory):
    with toy_registered():
        yield train_toy(tmp_path_factory.mktemp("onnx-toy"))


def _image(path: Path, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(sum(size))
    pixels = rng.integers(0, 50, (*size, 3), dtype=np.uint8)
    h, w = size
    pixels[h // 4: h // 2, w // 4: w // 2] = (210, 60, 40)  # a red object, as the toy model sees them
    Image.fromarray(pixels).save(path)
    return path


def test_auto_takes_the_torchscript_exporter_at_once_for_torchvision_detectors_with_the_asked_opset(
        detector: Detector, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", str(detector.run), "--out", str(out), "--opset", "16"]) == 0  # --exporter auto: the default
    printed = capsys.readouterr().out
    notes = [line for line in printed.splitlines() if line.startswith("note:")]
    assert notes == ["note: the TorchScript-based exporter (torch's dynamo exporter does not handle rcnn models)"]
    assert "torchscript-onnx exporter" in printed and "parity passed" in printed
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["exporter"] == "torchscript-onnx" and meta["opset"] == 16
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        opsets = {o.domain: o.version for o in onnx.load(str(out), load_external_data=False).opset_import}
        assert opsets.get("", opsets.get("ai.onnx")) == 16, opsets
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]  # no temporary left


def test_auto_falls_back_to_the_torchscript_exporter_with_a_note(toy_run, branchy_toy, tmp_path: Path,
                                                                  capsys) -> None:
    data, run = toy_run
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--out", str(out)]) == 0  # --exporter auto
    printed = capsys.readouterr().out
    notes = [line for line in printed.splitlines() if line.startswith("note: dynamo exporter failed (")]
    assert len(notes) == 1 and notes[0].endswith("; used the TorchScript-based one"), printed
    assert "torchscript-onnx exporter" in printed and "parity passed" in printed
    assert json.loads((tmp_path / "m.onnx.json").read_text())["exporter"] == "torchscript-onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]  # no temporary left


def test_dynamo_asked_where_it_fails_is_an_error_in_one_line_and_leaves_no_file(toy_run, branchy_toy,
                                                                              tmp_path: Path, capsys) -> None:
    data, run = toy_run
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--out", str(out), "--exporter", "dynamo"]) == 1  # ExportError
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("segtune: error:")]
    assert len(errors) == 1 and "the dynamo ONNX exporter fails on this model: " in errors[0], captured.err
    reason = errors[0].split("fails on this model: ", 1)[1]
    assert reason.strip() and "Traceback" not in captured.err
    assert "exported" not in captured.out
    assert list(tmp_path.iterdir()) == []  # neither the file, its sidecar nor a temporary


def test_auto_keeps_the_dynamo_file_where_dynamo_works_and_it_takes_any_size(toy_run, tmp_path: Path,
                                                                             capsys) -> None:
    data, run = toy_run
    out = tmp_path / "toy.onnx"
    # the toy stays registered while toy_run is in use
    assert main(["export", str(run), "--out", str(out), "--exporter", "auto"]) == 0
    printed = capsys.readouterr().out
    assert "dynamo exporter" in printed and "note:" not in printed and "parity passed" in printed, printed
    meta = json.loads((tmp_path / "toy.onnx.json").read_text())
    assert meta["exporter"] == "dynamo" and meta["format"] == "onnx"
    images = [_image(tmp_path / "small.png", (64, 80)), _image(tmp_path / "big.png", (150, 110))]
    preds = tmp_path / "preds"
    assert main(["predict", str(out), *map(str, images), "--out", str(preds), "--score-threshold", "0.3"]) == 0
    results = json.loads((preds / "predictions.json").read_text())
    sizes = {"small.png": (64, 80), "big.png": (150, 110)}
    seen = {Path(r["file_name"]).name for r in results}
    assert seen == set(sizes), results  # the one file detected the object on both sizes
    for r in results:
        h, w = sizes[Path(r["file_name"]).name]
        x, y, bw, bh = r["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w + 1 and y + bh <= h + 1 and r["score"] >= 0.3
