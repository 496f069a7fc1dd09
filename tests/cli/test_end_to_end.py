"""train -> evaluate -> predict through the ``segtune`` command, as a user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from segtune.cli.main import main
from segtune.evaluation import STAT_NAMES
from tests.conftest import SMALL_MODEL
from tests.detector import (BOX_COLOUR, CLASSES, DISC_COLOUR, MIN_AP, MIN_AP50, STEPS, Detector, found,
                            shapes_image, truth)


def tiny_flags() -> list[str]:
    return [f"{k}={v}" for k, v in SMALL_MODEL.items()]


def test_the_test_detector_finds_the_shapes(detector: Detector) -> None:
    """The session's trained model (tests/detector.py) is what the checks below rely on: it detects."""
    for kind in ("bbox", "segm"):
        assert detector.metrics[kind]["AP50"] >= MIN_AP50 and detector.metrics[kind]["AP"] >= MIN_AP, \
            (kind, detector.metrics[kind])


def test_train_writes_a_complete_run_folder(detector: Detector) -> None:
    run = detector.run
    for name in ("config.yaml", "split.json", "train.log", "metrics.json", "metrics.csv", "weights/last.pt",
                 "weights/best.pt"):
        assert (run / name).is_file(), name
    split = json.loads((run / "split.json").read_text())
    assert len(split["test"]) == 4 and len(split["train"]) == 12
    assert not set(split["test"]) & set(split["train"])
    history = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [0]
    assert set(history[0]["metrics"]) == {"bbox", "segm"}
    assert list(history[0]["metrics"]["segm"]) == list(STAT_NAMES)
    assert history[0]["train"]["iters"] == STEPS and history[0]["train"]["loss"] > 0
    assert set(history[0]["per_class"]["segm"]) == {"box", "disc"}
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and "segm/AP" in rows[0] and "bbox/AR100" in rows[0] and "train/loss_mask" in rows[0]
    assert float(rows[0]["segm/AP"]) == pytest.approx(history[0]["metrics"]["segm"]["AP"], abs=1e-4)
    log = (run / "train.log").read_text()
    assert f"Epoch: [0]  [ 50/{STEPS}]" in log and "eta:" in log and "max mem:" in log and "loss_classifier" in log
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in log
    assert "random initialisation" in log
    # No temporary files left behind by the atomic writes.
    assert not [p for p in run.rglob("*.tmp")]


def test_checkpoints_load_with_weights_only(detector: Detector) -> None:
    last = torch.load(detector.run / "weights" / "last.pt", map_location="cpu", weights_only=True)
    best = torch.load(detector.best, map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["step"] == STEPS and last["classes"] == CLASSES
    assert "optimizer" in last and "scheduler" in last and "optimizer" not in best
    assert last["config"]["model"]["min_size"] == 64
    assert best["split"] == json.loads((detector.run / "split.json").read_text())


def test_config_yaml_repeats_the_run_settings(detector: Detector) -> None:
    from segtune.config import build_config, flatten, load_yaml

    cfg = build_config(("saved", flatten(load_yaml(detector.run / "config.yaml"))))
    assert cfg.model.min_size == 64 and cfg.train.epochs == 1 and cfg.train.max_iters_per_epoch == STEPS
    assert cfg.data.class_map == str(detector.data / "classes.yaml")


def test_evaluate_reuses_the_saved_split(detector: Detector, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(detector.best), "--out", str(out), "--amp", "none"]) == 0  # as training scored
    printed = capsys.readouterr().out
    assert "4 test images" in printed and "segm AP" in printed
    saved = json.loads(out.read_text())
    assert saved["num_images"] == 4
    # Same model, same split: the same numbers as training's evaluation, and they are those of a model that detects.
    for kind in ("bbox", "segm"):
        assert saved["metrics"][kind]["AP"] == pytest.approx(detector.metrics[kind]["AP"], abs=1e-9)
        assert saved["metrics"][kind]["AR100"] == pytest.approx(detector.metrics[kind]["AR100"], abs=1e-9)
        assert saved["metrics"][kind]["AP50"] >= MIN_AP50


def _detections(results: list[dict], file_name: str, min_score: float = 0.5) -> list[tuple[str, list[float]]]:
    return [(r["category_name"], [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]])
            for r in results if Path(r["file_name"]).name == file_name and r["score"] >= min_score]


def test_predict_on_files_folders_and_globs(detector: Detector, tmp_path: Path) -> None:
    images = detector.data / "PNGImages"
    out = tmp_path / "preds"
    code = main(["predict", str(detector.run), str(images / "im01.png"), str(images), str(images / "im0[45].png"),
                 "--out", str(out)])
    assert code == 0
    pictures = sorted(p.name for p in out.glob("*.png"))
    # 1 file + 16 in the folder + 2 from the glob; repeated stems get a numbered name.
    assert len(pictures) == 19 and "im01.png" in pictures and "im01-2.png" in pictures
    with Image.open(out / "im03.png") as pic, Image.open(images / "im03.png") as src:
        assert pic.size == src.size and pic.mode == "RGB"
        assert pic.tobytes() != src.convert("RGB").tobytes()  # something was drawn on it
    results = json.loads((out / "predictions.json").read_text())
    for entry in results:
        assert {"image_id", "category_id", "bbox", "score", "segmentation", "file_name"} <= set(entry)
        assert entry["category_name"] in CLASSES and len(entry["bbox"]) == 4
    # The test images (never trained on): both shapes found, each by its own class.
    for image in detector.test_images:
        assert all(found(truth(image), _detections(results, image.name))), (image.name, truth(image))
    assert not _detections(results, "im00.png")  # the empty image: nothing above 0.5


def test_predict_split_and_python_api(detector: Detector, tmp_path: Path) -> None:
    import segtune

    assert main(["predict", str(detector.best), "--split", "test", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.name for p in detector.test_images)
    predictor = segtune.Predictor.from_checkpoint(detector.run, score_threshold=0.5)
    image, objects = shapes_image(tmp_path / "other.png", seed=7, size=(64, 96))  # a new image, another size
    with Image.open(image) as img:
        pred = predictor(img.convert("RGB"))
    assert set(pred.names) == {"box", "disc"}
    assert all(found(objects, list(zip(pred.names, pred.boxes.tolist()))))
    assert pred.masks is not None and pred.masks.shape[1:] == (64, 96)
    pixels = torch.from_numpy(np.array(Image.open(image)))
    for name, colour in (("box", BOX_COLOUR), ("disc", DISC_COLOUR)):
        mask = pred.masks[pred.names.index(name)]  # the class's best detection (they come by score)
        shape = (pixels == torch.tensor(colour)).all(-1)
        overlap = (mask & shape).sum() / (mask | shape).sum()
        assert overlap > 0.6, (name, overlap)  # the mask lies on its shape
    drawn = pred.draw()
    assert drawn.shape == (3, 64, 96) and not torch.equal(drawn, pred.image)
    # A path and a grayscale image work too.
    assert len(predictor(image)) == len(pred)
    predictor(Image.new("L", (40, 30)))


def test_predict_and_evaluate_with_amp_bf16(detector: Detector, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import segtune

    run, image = detector.run, detector.test_images[0]
    out = tmp_path / "eval.json"
    capsys.readouterr()
    assert main(["evaluate", str(run), "--amp", "bf16", "--out", str(out)]) == 0
    assert "number formats: bf16 autocast, channels-last weights" in capsys.readouterr().err
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"bbox", "segm"} and metrics["bbox"]["AP50"] >= MIN_AP50  # bf16 still finds them
    assert main(["predict", str(run), str(image), "--amp", "bf16", "--out", str(tmp_path / "preds")]) == 0
    results = json.loads((tmp_path / "preds" / "predictions.json").read_text())
    assert all(found(truth(image), _detections(results, image.name)))
    bf16 = segtune.Predictor.from_checkpoint(run, amp="bf16")
    conv = next(m for m in bf16.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # An exported file runs as it was exported: --amp bf16 with one is a clear error, not a traceback.
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not read")
    capsys.readouterr()
    assert main(["predict", str(onnx), str(image), "--amp", "bf16"]) == 2
    assert main(["evaluate", str(onnx), "--amp", "bf16"]) == 2
    err = capsys.readouterr().err
    assert err.count("runs as it was exported") == 2 and "Traceback" not in err


def test_predict_by_default_measures_the_number_format_once_then_remembers_it(
        detector: Detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SEGTUNE_CACHE_DIR", str(tmp_path / "cache"))
    image = detector.test_images[0]
    for n, when in enumerate(("measured now", "remembered in")):
        out = tmp_path / f"preds{n}"
        assert main(["predict", str(detector.run), str(image), "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert "number formats:" in err and "--amp auto: the faster here (" in err and when in err
        results = json.loads((out / "predictions.json").read_text())
        assert all(found(truth(image), _detections(results, image.name)))  # whichever format won, it finds them
    assert len(json.loads((tmp_path / "cache" / "fastest.json").read_text())) == 1


def test_bad_data_path_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "nope"), "--out", str(run), *tiny_flags()])
    assert code == 2
    assert f"{tmp_path / 'nope'}: data path does not exist" in capsys.readouterr().err
    assert not run.exists()


def test_truncated_image_stops_before_any_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import make_mask_folder

    data = make_mask_folder(tmp_path / "data", n=4)
    bad = data / "PNGImages" / "img002.png"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--test-size", "1", *tiny_flags()]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "truncated" in err
    assert not run.exists()


def test_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    from segtune.engine.run import new_run_dir

    first = new_run_dir(tmp_path / "run")
    (first / "config.yaml").write_text("x")
    second = new_run_dir(tmp_path / "run")
    assert second == tmp_path / "run-2" and (first / "config.yaml").read_text() == "x"


def test_not_our_checkpoint_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2)}, bogus)
    assert main(["evaluate", str(bogus)]) == 2
    err = capsys.readouterr().err
    assert f"{bogus}: not a segtune checkpoint" in err
    assert main(["predict", str(bogus), str(tmp_path)]) == 2


def test_unknown_override_suggests_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(tmp_path), "train.epoch=3"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_python_dash_m_segtune_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "segtune", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "train" in done.stdout and "predict" in done.stdout


@pytest.mark.slow
def test_train_on_real_pennfudan_then_evaluate_and_predict(pennfudan: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main(["train", "--data", str(pennfudan), "--out", str(run), "--epochs", "1", "--test-size", "3",
                 "--max-iters-per-epoch", "2", "--weights", "none", "--weights-backbone", "none", "--min-size", "128", "--max-size", "192",
                 "--rpn-post-nms-top-n-train", "100", "--box-batch-size-per-image", "64"])
    assert code == 0
    history = json.loads((run / "metrics.json").read_text())
    assert {"bbox", "segm"} == set(history[0]["metrics"])
    assert 0.0 <= history[0]["metrics"]["segm"]["AP"] <= 1.0
    assert main(["evaluate", str(run)]) == 0
    assert main(["predict", str(run), "--split", "test", "--out", str(tmp_path / "p")]) == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == 3


def test_cpu_scratch_preset_trains_within_its_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         fake_training_clock) -> None:
    """The recipe ``auto`` picks offline without a GPU: its model and a run cut by --time-limit, evaluated.
    The training clock is fake (each reading 0.5 s on), so the steps taken do not depend on the machine."""
    from segtune.engine import budget as budget_module
    from tests.conftest import make_mask_folder

    monkeypatch.setattr(budget_module, "CALIBRATE_STEPS", (1, 2))
    fake_training_clock(0.5)
    data = make_mask_folder(tmp_path / "data", n=6)
    run = tmp_path / "run"
    code = main(["train", "--data", str(data), "--out", str(run), "--preset", "cpu-scratch", "--time-limit", "0.15",
                 "--test-size", "2", "--batch-size", "2", "--repeat", "2", "--print-freq", "1",
                 "model.min_size=96", "model.max_size=128"])
    assert code == 0
    config = (run / "config.yaml").read_text()
    assert "preset: cpu-scratch" in config and "backbone: resnet18" in config and "head_norm: gn" in config
    # The recipe trains with its augmentation: large-scale jitter of the input square, copy-paste within a batch.
    train = yaml.safe_load(config)["train"]
    assert train["augment"] == ["hflip", "lsj", "copypaste"] and train["lsj_scale"] == [0.5, 1.5]
    history = json.loads((run / "metrics.json").read_text())
    assert 0 < history[-1]["train_time_s"] <= 0.15 * 60 + 5  # the limit, plus at most one step
    assert set(history[-1]["metrics"]) == {"bbox", "segm"}
    log = (run / "train.log").read_text()
    assert "fit to the time limit of 0.15 min" in log
    state = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)
    run_state = state["run"]  # what the run learned; run.json holds the same
    assert run_state == json.loads((run / "run.json").read_text())
    assert run_state["max_steps"] >= 2 and state["step"] <= run_state["max_steps"]  # stopped by the limit or the fitted end
    assert run_state["epochs"] == -(-run_state["max_steps"] // 4)  # 4 training images x 2 passes / batch 2 per epoch
    assert yaml.safe_load(config)["train"]["epochs"] == 100  # the config stays as given: the preset's upper bound
    assert (run / "weights" / "best.pt").is_file()
