"""segtune export: ONNX (run by ONNX Runtime) and TorchScript files that give the eager model's detections
(compared as sets), a sidecar that makes the file usable alone, and clear errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.cli.main import main
from segtune.engine import configure, train
from segtune.export import compare, export_model
from segtune.fileio import current_umask
from segtune.predict import Predictor
from tests.conftest import TINY_MODEL, make_mask_folder, short_run_settings
from tests.detector import CLASSES, Detector, found, shapes_image


@pytest.fixture(scope="module")
def run_dir(detector: Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's trained Mask R-CNN run (tests/detector.py): it finds the shapes, and its
    GroupNorm heads are those of segtune's CPU recipe. A copy, as these tests write exports beside it."""
    return Path(shutil.copytree(detector.run, tmp_path_factory.mktemp("export") / "run"))


def _images(tmp_path: Path) -> list[Path]:
    """Images like the detector's of three sizes (each with a box and a disc), then one with nothing on it."""
    paths = [shapes_image(tmp_path / f"im{k}.png", seed=k, size=size)[0]
             for k, size in enumerate([(64, 64), (64, 96), (64, 123)])]
    paths.append(tmp_path / "blank.png")
    Image.fromarray(np.full((64, 64, 3), 30, dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_model_gives_the_eager_detections(run_dir: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"model.{fmt}"
    result = export_model(run_dir, fmt, out=out, exporter="legacy")
    assert result.path == out and out.is_file() and result.parity.ok, result.parity.problems
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # the usual permissions, not mkstemp's 0600
    meta = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert meta["classes"] == CLASSES and meta["format"] == fmt and meta["outputs"][-1] == "masks"
    eager = Predictor.from_checkpoint(run_dir, device="cpu", score_threshold=0.0, amp="none")
    exported = Predictor.from_checkpoint(out, device="cpu", score_threshold=0.0)
    compared = 0
    for path in _images(tmp_path):
        a, b = eager(path).raw, exported(path).raw
        assert b["masks"].shape[-2:] == a["masks"].shape[-2:]  # pasted to the image's own size
        parity = compare(a, b, score_threshold=0.05)
        assert parity.ok, (path.name, parity.problems)
        compared += parity.matched
    assert compared > 0  # the check compared real detections, not only empty sets
    for k, size in enumerate([(64, 64), (64, 96)]):  # and the file finds what it should
        image, objects = shapes_image(tmp_path / f"check{k}.png", seed=20 + k, size=size)
        pred = exported(image)
        confident = [(n, b) for n, b, s in zip(pred.names, pred.boxes.tolist(), pred.scores.tolist()) if s >= 0.5]
        assert all(found(objects, confident)), (image.name, objects, confident)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_file_that_keeps_no_detection_returns_none(run_dir: Path, tmp_path: Path, fmt: str) -> None:
    """With the score threshold baked in, an image on which no detection passes it gives empty outputs, not
    an error inside the runtime (the GroupNorm mask head reshapes its input by groups: 0 RoIs included)."""
    out = tmp_path / f"m.{fmt}"
    assert main(["export", str(run_dir), "--format", fmt, "--out", str(out), "--exporter", "legacy",
                 "--score-threshold", "0.5"]) == 0
    exported = Predictor.from_checkpoint(out, device="cpu", score_threshold=0.5)
    blank = _images(tmp_path)[-1]
    pred = exported(blank)
    assert len(pred) == 0 and pred.masks is not None and pred.masks.shape == (0, 64, 64)
    image, objects = shapes_image(tmp_path / "shapes.png", seed=5)
    assert all(found(objects, list(zip(exported(image).names, exported(image).boxes.tolist()))))


def test_an_exported_model_evaluates_as_its_checkpoint_does(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    export_model(run_dir, "onnx", out=out, exporter="legacy")
    assert main(["evaluate", str(run_dir), "--out", str(tmp_path / "eager.json"), "--amp", "none"]) == 0
    assert main(["evaluate", str(out), "--out", str(tmp_path / "onnx.json")]) == 0
    eager = json.loads((tmp_path / "eager.json").read_text())["metrics"]
    onnx = json.loads((tmp_path / "onnx.json").read_text())["metrics"]
    for iou_type in ("bbox", "segm"):
        assert abs(eager[iou_type]["AP"] - onnx[iou_type]["AP"]) <= 0.005
        assert abs(eager[iou_type]["AP50"] - onnx[iou_type]["AP50"]) <= 0.005


def test_the_cli_exports_beside_the_checkpoint_and_predict_takes_the_file(run_dir: Path, tmp_path: Path,
                                                                           capsys) -> None:
    assert main(["export", str(run_dir), "--format", "onnx", "--exporter", "legacy"]) == 0
    assert "parity passed" in capsys.readouterr().out
    onnx = run_dir / "weights" / "best.onnx"
    assert onnx.is_file() and (run_dir / "weights" / "best.onnx.json").is_file()
    assert main(["predict", str(onnx), *map(str, _images(tmp_path)[:2]), "--out", str(tmp_path / "preds"),
                 "--score-threshold", "0.0"]) == 0
    assert json.loads((tmp_path / "preds" / "predictions.json").read_text())


def test_bad_export_input_gets_a_clear_error(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", str(run_dir), "--out", str(tmp_path / "missing" / "m.onnx")]) != 0
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", str(tmp_path / "m.torchscript")]) != 0  # onnx into another suffix
    assert ".onnx" in capsys.readouterr().err
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not onnx")
    assert main(["predict", str(foreign), str(_images(tmp_path)[0]), "--out", str(tmp_path / "p")]) != 0
    assert "sidecar" in capsys.readouterr().err
    (tmp_path / "foreign.onnx.json").write_text(json.dumps({"exported_by": "segtune", "sidecar_version": 99}))
    assert main(["predict", str(foreign), str(_images(tmp_path)[0]), "--out", str(tmp_path / "p")]) != 0
    err = capsys.readouterr().err
    assert "sidecar version 99" in err and "Traceback" not in err
    assert not list(tmp_path.glob(".m.*"))  # nothing half-written left behind


def test_the_torchscript_file_runs_with_torch_alone(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.torchscript"
    export_model(run_dir, "torchscript", out=out)
    module = torch.jit.load(str(out))
    image = torch.rand(3, 70, 90)
    losses, detections = module([image])
    assert set(detections[0]) >= {"boxes", "labels", "scores", "masks"}


def _photo_sized_images(root: Path) -> list[Path]:
    """Synthetic images of Penn-Fudan's sizes (about 300-550 px a side, portrait and landscape), with objects:
    larger than the training images, so the model's resize scales them down."""
    paths = []
    for k, size in enumerate([(358, 450), (480, 311), (536, 559)]):
        folder = make_mask_folder(root / str(k), n=1, size=size, empty=(), seed=10 + k)
        paths += sorted((folder / "PNGImages").glob("*.png"))
    return paths


@pytest.mark.parametrize("model", ["fasterrcnn_resnet50_fpn", "cpu-scratch"])
def test_a_detection_only_model_and_the_cpu_recipe_export_with_parity(tmp_path: Path, model: str) -> None:
    data = make_mask_folder(tmp_path / "data", n=6)
    settings = short_run_settings(data, tmp_path / "run", **{"data.test_size": 2, "train.max_iters_per_epoch": 1,
                                                              "train.report": False})
    if model == "cpu-scratch":
        settings["train.preset"] = "cpu-scratch"
    else:  # the torchvision architecture at TINY_MODEL's size, not the short run's own small model
        settings = {**{k: v for k, v in settings.items() if not k.startswith("model.")}, **TINY_MODEL,
                    "model.name": model}
    run = train(configure(("test", settings))).run_dir
    images = _photo_sized_images(tmp_path / "photos") + [_images(tmp_path)[-1]]  # + a blank image
    eager = Predictor.from_checkpoint(run, device="cpu", score_threshold=0.0, amp="none")
    for fmt in ("onnx", "torchscript"):
        out = tmp_path / f"m.{fmt}"
        assert export_model(run, fmt, out=out, exporter="legacy").parity.ok
        exported = Predictor.from_checkpoint(out, device="cpu", score_threshold=0.0)
        for path in images:
            a, b = eager(path).raw, exported(path).raw
            assert ("masks" in b) == (model == "cpu-scratch")
            parity = compare(a, b, score_threshold=0.05)
            assert parity.ok, (fmt, path.name, parity.problems)


def test_segtune_benchmark_prints_every_path_and_writes_json(run_dir: Path, capsys) -> None:
    assert main(["benchmark", str(run_dir), "--images", "1"]) == 0
    table = capsys.readouterr().out
    assert "ms / image, score >= 0.5 |" in table
    rows = json.loads((run_dir / "benchmark.json").read_text())["rows"]
    assert [r["path"] for r in rows] == ["eager", "eager-bf16", "torchscript", "onnx", "openvino"]
    for r in rows:
        assert f"| {r['path']} |" in table
        if r["path"] in ("torchscript", "onnx", "openvino"):
            assert r["status"] == "parity passed" and r["size_mb"] > 0
        if r["status"] in ("ok", "parity passed"):
            assert r["bbox_ap"] is not None and r["segm_ap"] is not None and r["ms_per_image"] > 0
            assert r["predict_ms_per_image"] > 0  # timed again at prediction settings (score >= 0.5)
        else:
            assert r["path"] == "eager-bf16" and r["status"].startswith("skipped: this CPU has no native")
    eager, onnx, openvino = rows[0], rows[-2], rows[-1]
    assert abs(eager["segm_ap"] - onnx["segm_ap"]) <= 0.005
    assert abs(eager["segm_ap"] - openvino["segm_ap"]) <= 0.005


def test_a_file_exported_with_a_score_threshold_drops_low_scores_itself(run_dir: Path, tmp_path: Path,
                                                                         caplog) -> None:
    image = _images(tmp_path)[0]
    eager = Predictor.from_checkpoint(run_dir, device="cpu", score_threshold=0.0, amp="none")
    scores = eager(image).scores.sort().values
    gaps = [k for k in range(1, len(scores)) if scores[k] - scores[k - 1] > 2e-3]
    assert gaps  # a threshold between two scores: ONNX's scores differ from eager's in the 7th digit
    k = gaps[len(gaps) // 2]
    threshold = float(scores[k - 1] + scores[k]) / 2
    out = tmp_path / "high.onnx"
    assert main(["export", str(run_dir), "--out", str(out), "--exporter", "legacy",
                 "--score-threshold", str(threshold)]) == 0
    meta = json.loads((tmp_path / "high.onnx.json").read_text())
    assert meta["min_score"] == pytest.approx(threshold, abs=1e-6) and meta["score_threshold"] == max(0.5, meta["min_score"])
    got = Predictor.from_checkpoint(out, device="cpu", score_threshold=0.0)(image).raw
    assert got["scores"].min() > threshold - 1e-6 and len(got["scores"]) < len(scores)
    eager.score_threshold = threshold
    parity = compare(eager(image).raw, got, score_threshold=0.0)
    assert parity.ok and parity.matched == len(got["scores"]), parity.problems
    assert main(["export", str(run_dir), "--out", str(tmp_path / "bad.onnx"), "--score-threshold", "1.5"]) == 2
