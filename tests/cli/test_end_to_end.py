"""train -> evaluate -> predict through the ``segtune`` command, as a user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from segtune.cli.main import main
from segtune.evaluation import STAT_NAMES
from tests.conftest import TINY_MODEL


def tiny_flags() -> list[str]:
    return [f"{k}={v}" for k, v in TINY_MODEL.items()]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.conftest import make_mask_folder

    root = tmp_path_factory.mktemp("e2e")
    data = make_mask_folder(root / "data", n=6)
    run = root / "runs" / "tiny"
    code = main(["train", "--data", str(data), "--out", str(run), "--epochs", "2", "--test-size", "2",
                 "--max-iters-per-epoch", "2", "--classes", "box", "--print-freq", "1", *tiny_flags()])
    assert code == 0
    return data, run


def test_train_writes_a_complete_run_folder(trained_run: tuple[Path, Path]) -> None:
    data, run = trained_run
    for name in ("config.yaml", "split.json", "train.log", "metrics.json", "metrics.csv", "weights/last.pt",
                 "weights/best.pt"):
        assert (run / name).is_file(), name
    split = json.loads((run / "split.json").read_text())
    assert len(split["test"]) == 2 and len(split["train"]) == 4
    assert not set(split["test"]) & set(split["train"])
    history = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1]
    for record in history:
        assert set(record["metrics"]) == {"bbox", "segm"}
        assert list(record["metrics"]["segm"]) == list(STAT_NAMES)
        assert record["train"]["iters"] == 2 and record["train"]["loss"] > 0
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "segm/AP" in rows[0] and "bbox/AR100" in rows[0] and "train/loss_mask" in rows[0]
    log = (run / "train.log").read_text()
    assert "Epoch: [0]  [1/2]" in log and "eta:" in log and "max mem:" in log and "loss_classifier" in log
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in log
    assert "random initialisation" in log
    # No temporary files left behind by the atomic writes.
    assert not [p for p in run.rglob("*.tmp")]


def test_checkpoints_load_with_weights_only(trained_run: tuple[Path, Path]) -> None:
    _, run = trained_run
    last = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)
    best = torch.load(run / "weights" / "best.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["step"] == 4 and last["classes"] == ["box"]
    assert "optimizer" in last and "scheduler" in last and "optimizer" not in best
    assert last["config"]["model"]["min_size"] == 64
    assert best["split"] == json.loads((run / "split.json").read_text())


def test_config_yaml_repeats_the_run_settings(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    from segtune.config import build_config, flatten, load_yaml

    _, run = trained_run
    cfg = build_config(("saved", flatten(load_yaml(run / "config.yaml"))))
    assert cfg.model.min_size == 64 and cfg.train.epochs == 2 and cfg.data.classes == ["box"]


def test_evaluate_reuses_the_saved_split(trained_run: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, run = trained_run
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run / "weights" / "best.pt"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 test images" in printed and "segm AP" in printed
    saved = json.loads(out.read_text())
    assert saved["num_images"] == 2
    best = torch.load(run / "weights" / "best.pt", weights_only=True)
    # Same model, same split: the same numbers as training's evaluation of that epoch.
    assert saved["metrics"]["segm"]["AP"] == pytest.approx(best["metrics"]["segm"]["AP"], abs=1e-9)
    assert saved["metrics"]["bbox"]["AR100"] == pytest.approx(best["metrics"]["bbox"]["AR100"], abs=1e-9)


def test_predict_on_files_folders_and_globs(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained_run
    images = data / "PNGImages"
    out = tmp_path / "preds"
    code = main(["predict", str(run), str(images / "img001.png"), str(images), str(images / "img00[45].png"),
                 "--out", str(out), "--score-threshold", "0.0"])
    assert code == 0
    pictures = sorted(p.name for p in out.glob("*.png"))
    # 1 file + 6 in the folder + 2 from the glob; repeated stems get a numbered name.
    assert len(pictures) == 9 and "img001.png" in pictures and "img001-2.png" in pictures
    with Image.open(out / "img003.png") as pic, Image.open(images / "img003.png") as src:
        assert pic.size == src.size and pic.mode == "RGB"
    results = json.loads((out / "predictions.json").read_text())
    assert isinstance(results, list)
    for entry in results:
        assert {"image_id", "category_id", "bbox", "score", "segmentation", "file_name"} <= set(entry)
        assert entry["category_name"] == "box" and len(entry["bbox"]) == 4


def test_predict_split_and_python_api(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    import segtune

    data, run = trained_run
    assert main(["predict", str(run / "weights" / "best.pt"), "--split", "test", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.png"))) == 2
    predictor = segtune.Predictor.from_checkpoint(run, score_threshold=0.0)
    with Image.open(data / "PNGImages" / "img002.png") as img:
        pred = predictor(img.convert("RGB"))
    assert pred.boxes.shape[1:] == (4,) and len(pred.scores) == len(pred.names)
    assert pred.masks is not None and pred.masks.shape[1:] == (72, 96)
    assert pred.draw().shape == (3, 72, 96)
    # A path and a grayscale image work too.
    assert len(predictor(data / "PNGImages" / "img002.png")) == len(pred)
    predictor(Image.new("L", (40, 30)))


def test_predict_and_evaluate_with_amp_bf16(trained_run: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import segtune

    data, run = trained_run
    out = tmp_path / "eval.json"
    capsys.readouterr()
    assert main(["evaluate", str(run), "--amp", "bf16", "--out", str(out)]) == 0
    assert "number formats: bf16 autocast, channels-last weights" in capsys.readouterr().err
    assert set(json.loads(out.read_text())["metrics"]) == {"bbox", "segm"}
    assert main(["predict", str(run), str(data / "PNGImages" / "img002.png"), "--amp", "bf16", "--score-threshold",
                 "0.0", "--out", str(tmp_path / "preds")]) == 0
    assert (tmp_path / "preds" / "img002.png").is_file()
    bf16 = segtune.Predictor.from_checkpoint(run, amp="bf16")
    conv = next(m for m in bf16.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # An exported file runs as it was exported: --amp with one is a clear error, not a traceback.
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not read")
    capsys.readouterr()
    assert main(["predict", str(onnx), str(data / "PNGImages" / "img002.png"), "--amp", "bf16"]) == 2
    assert main(["evaluate", str(onnx), "--amp", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.count("runs as it was exported") == 2 and "Traceback" not in err


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
