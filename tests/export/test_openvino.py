"""segtune export --format openvino: an OpenVINO IR (``.xml`` + ``.bin``, converted from the ONNX export) that
gives the eager model's detections (compared as sets), runs through predict / evaluate / Predictor, takes the
precision hint from SEGTUNE_OPENVINO_PRECISION, and is refused with a clear error when a part of it is missing
or broken; a failed export leaves none of its files behind."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segtune.cli.main import main
from segtune.engine import configure, train
from segtune.errors import CheckpointError
from segtune.export import compare, export_loaded
from segtune.fileio import current_umask
from segtune.predict import Predictor
from segtune.runtimes import open_model
from segtune.runtimes.openvino import OPENVINO, PRECISION_ENV, explicit_empty_constants
from segtune.runtimes.openvino_core import shared_core
from tests.conftest import TINY_MODEL, make_mask_folder, short_run_settings
from tests.detector import CLASSES, Detector, found, shapes_image
from tests.export.test_export import _images, _photo_sized_images


@pytest.fixture(autouse=True)
def _float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parity is checked in float32: on a CPU with AMX OpenVINO would otherwise run the IR in bf16."""
    monkeypatch.setenv(PRECISION_ENV, "f32")


@pytest.fixture(scope="module")
def run_dir(detector: Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's trained cpu-scratch Mask R-CNN run (tests/detector.py), to export beside."""
    return Path(shutil.copytree(detector.run, tmp_path_factory.mktemp("openvino") / "run"))


@pytest.fixture(scope="module")
def ir(run_dir: Path) -> tuple[Path, str]:
    """``segtune export RUN --format openvino`` (the model's own score threshold): the .xml and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(run_dir), "--format", "openvino"]) == 0
    return run_dir / "weights" / "best.xml", printed.getvalue()


def test_the_cli_writes_an_ir_that_gives_the_eager_detections(run_dir: Path, ir: tuple[Path, str],
                                                               tmp_path: Path) -> None:
    xml, printed = ir
    assert "parity passed" in printed and "openvino" in printed
    weights = run_dir / "weights"
    assert {"best.xml", "best.bin", "best.xml.json"} <= {p.name for p in weights.iterdir()}
    assert not [p.name for p in weights.iterdir() if p.name.startswith(".")]  # no temporary left
    assert xml.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    meta = json.loads((weights / "best.xml.json").read_text())
    assert meta["format"] == "openvino" and meta["classes"] == CLASSES and meta["outputs"][-1] == "masks"
    assert meta["exporter"] == "torchscript-onnx" and meta["opset"] == 17  # the ONNX export it was converted from
    eager = Predictor.from_checkpoint(run_dir, device="cpu", score_threshold=0.0, amp="none")
    exported = Predictor.from_checkpoint(xml, device="cpu", score_threshold=0.0)
    compared, images = 0, _images(tmp_path)
    for path in images:  # three sizes (the IR keeps height and width dynamic), then a blank one
        a, b = eager(path).raw, exported(path).raw
        assert b["masks"].shape[-2:] == a["masks"].shape[-2:]
        parity = compare(a, b, score_threshold=0.05)
        assert parity.ok, (path.name, parity.problems)
        compared += parity.matched
    assert compared > 0
    # Nothing on the blank image passes the IR's threshold: empty outputs, not one row of uninitialised values
    # (explicit_empty_constants) nor an error in the GroupNorm mask head on 0 RoIs.
    blank = exported(images[-1])
    assert len(blank) == 0 and blank.masks is not None and blank.masks.shape == (0, 64, 64)
    for k, size in enumerate([(64, 64), (64, 96)]):  # and it finds each shape with its class
        image, objects = shapes_image(tmp_path / f"check{k}.png", seed=20 + k, size=size)
        pred = exported(image)
        confident = [(n, b) for n, b, s in zip(pred.names, pred.boxes.tolist(), pred.scores.tolist()) if s >= 0.5]
        assert all(found(objects, confident)), (image.name, objects, confident)


def test_predict_and_evaluate_take_the_ir(detector: Detector, ir: tuple[Path, str], tmp_path: Path) -> None:
    xml, _ = ir
    image, objects = shapes_image(tmp_path / "shapes.png", seed=5)
    assert main(["predict", str(xml), str(image), "--out", str(tmp_path / "preds")]) == 0
    results = json.loads((tmp_path / "preds" / "predictions.json").read_text())
    detections = [(CLASSES[r["category_id"] - 1], [x, y, x + w, y + h]) for r in results for x, y, w, h in [r["bbox"]]]
    assert all(found(objects, detections)), (objects, results)
    assert main(["evaluate", str(xml), "--out", str(tmp_path / "openvino.json")]) == 0
    openvino = json.loads((tmp_path / "openvino.json").read_text())["metrics"]
    for iou_type in ("bbox", "segm"):  # the eager model's, measured on the same test split after training
        assert abs(detector.metrics[iou_type]["AP"] - openvino[iou_type]["AP"]) <= 0.005
    assert openvino["bbox"]["AP50"] >= 0.8  # a model that finds the shapes, not two empty answers


def test_the_precision_hint_comes_from_the_environment(ir: tuple[Path, str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    xml, _ = ir
    image, objects = shapes_image(tmp_path / "shapes.png", seed=5)
    monkeypatch.delenv(PRECISION_ENV)
    default = shared_core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    assert Predictor.from_checkpoint(xml, device="cpu").model.precision == default  # OpenVINO's choice
    for hint in ("bf16", "f32"):  # bf16 runs as f32 where the CPU has no bf16: either way it still detects
        monkeypatch.setenv(PRECISION_ENV, hint)
        predictor = Predictor.from_checkpoint(xml, device="cpu")
        assert predictor.model.precision in (hint, "f32")
        pred = predictor(image)
        assert all(found(objects, list(zip(pred.names, pred.boxes.tolist()))))
    monkeypatch.setenv(PRECISION_ENV, "int4")
    assert main(["predict", str(xml), str(image), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert f"segtune: error: {PRECISION_ENV}=int4: choose one of f32, bf16, f16" in err and "Traceback" not in err


def test_bad_ir_input_gets_a_clear_error(ir: tuple[Path, str], tmp_path: Path, capsys) -> None:
    xml, _ = ir
    image = shapes_image(tmp_path / "shapes.png", seed=3)[0]

    def refused(model: Path, *words: str, command: str = "predict") -> None:
        out = tmp_path / "preds"
        args = [command, str(model), *([str(image), "--out", str(out)] if command == "predict" else [])]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("segtune: error: ") and str(model.name) in err and "Traceback" not in err, err
        assert all(word in err for word in words), err
        assert not out.exists()  # nothing written

    def copy(name: str, parts: tuple[str, ...] = (".xml", ".bin", ".xml.json")) -> Path:
        for part in parts:
            shutil.copyfile(xml.with_name(f"best{part}"), tmp_path / f"{name}{part}")
        return tmp_path / f"{name}.xml"

    refused(copy("alone", (".xml", ".bin")), "no sidecar alone.xml.json")
    other = copy("other")
    Path(f"{other}.json").write_text(json.dumps({**json.loads(Path(f"{other}.json").read_text()),
                                                 "sidecar_version": 99}))
    refused(other, "sidecar version 99", "export the model again")
    refused(copy("nobin", (".xml", ".xml.json")), "nobin.bin", "missing", command="evaluate")
    broken = copy("broken")
    broken.with_suffix(".bin").write_bytes(broken.with_suffix(".bin").read_bytes()[:1000])  # cut short
    refused(broken, "OpenVINO cannot load it")


def test_a_failed_export_leaves_none_of_its_files(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys) -> None:
    """The IR is written (.xml, .bin, sidecar) before it is checked: a failure there removes all three."""
    def fails(path: Path, meta: dict) -> None:
        assert path.is_file() and path.with_suffix(".bin").is_file()  # both were written
        raise CheckpointError(f"{path}: cannot load it (a test's failure)")

    monkeypatch.setattr(OPENVINO, "load_for_check", fails)
    assert main(["export", str(run_dir), "--format", "openvino", "--out", str(tmp_path / "m.xml")]) == 2
    assert "a test's failure" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_if_branch_that_returns_an_empty_constant_reads_as_empty(tmp_path: Path) -> None:
    """The graph of torchvision's batched_nms in little: ``x if x.numel() else torch.empty(0)``. OpenVINO 2026.4.1
    reads the empty constant as one element; made a ConstantOfShape, the IR answers an empty input with nothing."""
    def branch(name: str, nodes: list) -> onnx.GraphProto:
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(name, TensorProto.INT64, [None])])

    empty = helper.make_node("Constant", [], ["then"], value=numpy_helper.from_array(np.empty((0,), np.int64)))
    nodes = [helper.make_node("Size", ["x"], ["n"]),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
             helper.make_node("Equal", ["n", "zero"], ["none"]),
             helper.make_node("If", ["none"], ["y"], then_branch=branch("then", [empty]),
                              else_branch=branch("else", [helper.make_node("Identity", ["x"], ["else"])]))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert explicit_empty_constants(model.graph) == 1
    onnx.save(model, tmp_path / "if.onnx")
    core = shared_core()
    request = core.compile_model(core.read_model(tmp_path / "if.onnx"), "CPU").create_infer_request()
    for given in (np.array([], np.int64), np.array([5, 6], np.int64), np.array([], np.int64)):
        assert np.array_equal(request.infer([given])[0], given)


@pytest.mark.parametrize("model", ["maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn"])
def test_the_tutorial_model_and_a_faster_rcnn_export_with_parity(tmp_path: Path, model: str) -> None:
    """The tutorial's Mask R-CNN R50-FPN and a detection-only Faster R-CNN at tiny input size (one training
    step: the parity of the conversion, not what the model finds, is checked here)."""
    data = make_mask_folder(tmp_path / "data", n=6)
    settings = short_run_settings(data, tmp_path / "run", **{"data.test_size": 2, "train.max_iters_per_epoch": 1,
                                                              "train.report": False})
    # The short run's training settings with this architecture at TINY_MODEL's input size (not the short run's
    # own small model).
    settings = {**{k: v for k, v in settings.items() if not k.startswith("model.")}, **TINY_MODEL, "model.name": model}
    run = train(configure(("test", settings))).run_dir
    loaded = open_model(run)  # read once: exported, then run eagerly beside the IR
    out = tmp_path / "m.xml"
    assert export_loaded(loaded, "openvino", out=out).parity.ok  # checked on two random images of two shapes
    eager = Predictor.from_loaded(loaded, score_threshold=0.0, amp="none")
    exported = Predictor.from_checkpoint(out, device="cpu", score_threshold=0.0)
    for path in (_photo_sized_images(tmp_path / "photos")[-1], _images(tmp_path)[-1]):  # 536 x 559 with objects; blank
        a, b = eager(path).raw, exported(path).raw
        assert ("masks" in b) == (model == "maskrcnn_resnet50_fpn")
        parity = compare(a, b, score_threshold=0.05)
        assert parity.ok, (path.name, parity.problems)


def test_two_files_released_in_the_order_opened_leave_signals_working(ir: tuple[Path, str]) -> None:
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack per Core; with a Core per file, releasing
    two files in the order they were opened left it on unmapped memory and the next SIGCHLD killed the process
    with SIGSEGV (segtune's suite died so). Run in a child process, which that would kill."""
    xml, _ = ir
    script = f"""
import gc, signal, subprocess, sys
from segtune.runtimes import open_model
first, second = open_model({str(xml)!r}), open_model({str(xml)!r})
del first; gc.collect()
del second; gc.collect()
signal.signal(signal.SIGCHLD, lambda *args: None)  # a handler: the signal is taken on the alternate stack
for _ in range(5):
    subprocess.run([sys.executable, "-c", "pass"], check=True)
print("survived")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("survived"), (done.returncode, done.stderr[-2000:])
