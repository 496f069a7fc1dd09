"""segtune export --format openvino --int8: the backbone and FPN quantised by NNCF, calibrated on the run's training
images, kept only when its AP on the test split stays within --max-ap-drop of the float file's (both written in the
sidecar); a refused file, a format without INT8 and data that moved are clear errors that leave nothing behind."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from segtune.cli.main import main
from segtune.export import int8 as int8_module
from segtune.runtimes.openvino import PRECISION_ENV
from segtune.runtimes.openvino_core import shared_core
from tests.detector import CLASSES, Detector, found, shapes_image


@pytest.fixture(autouse=True)
def _float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """The float parts in float32, whatever the CPU's default (bf16 on CPUs with AMX)."""
    monkeypatch.setenv(PRECISION_ENV, "f32")


def _replaced(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _replaced(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v, old, new) for v in value]
    return value


@pytest.fixture(scope="module")
def run_dir(detector: Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's trained Mask R-CNN run (tests/detector.py) whose data has moved since training:
    its checkpoint names a copy of the data that is then renamed to ``moved-data`` beside the run."""
    root = tmp_path_factory.mktemp("int8")
    run = Path(shutil.copytree(detector.run, root / "run"))
    data = Path(shutil.copytree(detector.data, root / "data"))
    best = run / "weights" / "best.pt"
    torch.save(_replaced(torch.load(best, weights_only=True), str(detector.data), str(data)), best)
    data.rename(root / "moved-data")
    return run


def export(*args: str) -> tuple[int, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", *args])
    return code, printed.getvalue()


def fake_quantize_names(xml: Path) -> list[str]:
    model = shared_core().read_model(str(xml))
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]


def test_an_int8_file_that_passes_its_gate_is_written_with_its_drop_and_still_detects(
        detector: Detector, tmp_path: Path) -> None:
    xml = tmp_path / "int8.xml"
    code, printed = export(str(detector.run), "--format", "openvino", "--out", str(xml), "--int8",
                           "--calibration-images", "12", "--max-ap-drop", "0.05")
    assert code == 0, printed
    assert "in INT8: bbox AP" in printed and "kept; " in printed and "in float: " in printed, printed
    meta = json.loads(Path(f"{xml}.json").read_text())
    assert meta["precision"] == "int8"
    gate = meta["int8"]
    assert gate["calibration_images"] == 12 and gate["test_images"] == len(detector.test_images)
    assert set(gate["ap_drop"]) == {"bbox", "segm"} and all(d <= 0.05 for d in gate["ap_drop"].values())
    for kind in ("bbox", "segm"):  # the float file's AP is the checkpoint's (measured after training)
        assert abs(gate["float_ap"][kind] - detector.metrics[kind]["AP"]) <= 0.005
        assert gate["float_ap"][kind] - gate["int8_ap"][kind] == pytest.approx(gate["ap_drop"][kind], abs=1e-4)
    names = fake_quantize_names(xml)  # really quantised, and only the backbone and FPN
    assert len(names) >= 10 and not [n for n in names if "/roi_heads/" in n or "/rpn/" in n], names
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    image, objects = shapes_image(tmp_path / "shapes.png", seed=5)
    assert main(["predict", str(xml), str(image), "--out", str(tmp_path / "preds")]) == 0
    results = json.loads((tmp_path / "preds" / "predictions.json").read_text())
    detections = [(CLASSES[r["category_id"] - 1], [x, y, x + w, y + h]) for r in results for x, y, w, h in [r["bbox"]]]
    assert all(found(objects, detections)), (objects, results)


def test_a_file_whose_ap_drops_too_far_is_refused_and_nothing_is_left(run_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Calibrated on the training images made a thousand times brighter, the quantisation steps are far too coarse
    for real activations: the AP collapses and the gate, which scores the real test images, refuses the file."""
    real = int8_module.CalibrationImages.__iter__
    monkeypatch.setattr(int8_module.CalibrationImages, "__iter__", lambda self: (image * 1000 for image in real(self)))
    out = tmp_path / "out"
    out.mkdir()
    code, _ = export(str(run_dir), "--format", "openvino", "--out", str(out / "m.xml"), "--int8",
                     "--calibration-images", "4", "--data", str(run_dir.parent / "moved-data"))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "segtune: error: --int8 refused: the backbone and its FPN in INT8: bbox AP" in err, err
    assert "the backbone without its FPN in INT8: bbox AP" in err and "--max-ap-drop 0.01" in err
    assert "Traceback" not in err
    assert list(out.iterdir()) == []  # neither the INT8 file nor the float one, nor a temporary


def test_int8_input_errors_name_the_problem_before_writing(run_dir: Path, tmp_path: Path, capsys) -> None:
    def refused(*args: str, words: tuple[str, ...]) -> None:
        code, _ = export(str(run_dir), "--out", str(tmp_path / "m.xml"), *args)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("segtune: error: ") and "Traceback" not in err, err
        assert all(word in err for word in words), err
        assert list(tmp_path.iterdir()) == []

    refused("--format", "openvino", "--max-ap-drop", "0.02", words=("--max-ap-drop: only with --int8",))
    refused("--format", "openvino", "--int8", "--max-ap-drop", "2", words=("--max-ap-drop 2", "[0, 1]"))
    # the data moved since training: named, with what to do
    refused("--format", "openvino", "--int8", words=("--int8 reads the run's train images", "give --data"))
    code, _ = export(str(run_dir), "--out", str(tmp_path / "m.onnx"), "--int8", "--data", str(run_dir.parent))
    err = capsys.readouterr().err
    assert code == 2 and "--int8: not available for the onnx format; choose one of openvino" in err, err


def test_segtune_benchmark_int8_adds_the_quantised_row(detector: Detector, tmp_path: Path, capsys) -> None:
    """``benchmark --int8``: an ``openvino-int8`` row after the float ones, quantised with export's defaults; on this
    small model the default 0.01 gate may refuse it, which the row then says (with the figures)."""
    run = Path(shutil.copytree(detector.run, tmp_path / "run"))
    assert main(["benchmark", str(run), "--images", "1", "--score-threshold", "-1", "--int8"]) == 0
    rows = {r["path"]: r for r in json.loads((run / "benchmark.json").read_text())["rows"]}
    assert list(rows)[-2:] == ["openvino", "openvino-int8"]
    row = rows["openvino-int8"]
    if row["status"].startswith("failed: "):
        assert "--int8 refused: the backbone and its FPN in INT8: bbox AP" in row["status"], row
    else:
        assert "; int8 the backbone" in row["status"] and row["segm_ap"] is not None and row["ms_per_image"] > 0, row
        assert (run / "weights" / "best-int8.xml").is_file()
    assert f"| openvino-int8 | {row['status']}" in capsys.readouterr().out
