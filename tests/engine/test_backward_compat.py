"""Backward compatibility: run folders written by an earlier segtune still load, evaluate, predict, export and resume.

The earlier code (the commit before the frozen config and the run-state record) ships with the tests,
as ``tests/fixtures/segtune_e4c4711/src.tar.xz`` (its ``src`` tree, 110 KB; README.md there says how it
was made), and runs in a subprocess, so the run folder is one that segtune really wrote then, not a copy
of its format made by today's code. Nothing here needs git or its history: a shallow clone or a source
archive runs this test too. (A run folder itself is not shipped: the smallest model that code builds
has a MobileNetV3 trunk of 0.93 M parameters, about 4 MB per checkpoint.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from segtune.checkpoint import load_checkpoint
from segtune.engine import configure, train
from segtune.evaluation import evaluate_checkpoint
from segtune.export import export_model
from segtune.models.min_score import set_min_score
from segtune.predict import Predictor, split_images
from tests.conftest import TINY_MODEL, make_mask_folder

REPO = Path(__file__).resolve().parents[2]
#: The last commit whose checkpoints hold the data path and class names in their config, with no
#: run-state record (checkpoint format 1 as first written).
BEFORE_RUN_STATE = "e4c4711"
#: ``git archive e4c4711 src | xz -9e`` (tests/fixtures/segtune_e4c4711/README.md).
OLD_SOURCE = REPO / "tests" / "fixtures" / f"segtune_{BEFORE_RUN_STATE}" / "src.tar.xz"

_TRAIN_THEN = """
import json, sys, segtune, torch
from segtune.evaluation.evaluator import evaluate_checkpoint
from segtune.predict.predictor import Predictor
settings = dict(__SETTINGS__)
run = segtune.train(segtune.configure(("old run", settings))).run_dir
predictor = Predictor.from_checkpoint(run, device="cpu", score_threshold=0.0)
predictor.model.roi_heads.score_thresh = 0.0  # every ranked box, however low its score
pred = predictor(sys.argv[1])
torch.save({k: pred.raw[k] for k in ("boxes", "scores", "labels")}, "old_prediction.pt")
report = evaluate_checkpoint(run, device="cpu")
json.dump(report.metrics, open("old_metrics.json", "w"))
"""


def _old_source(dest: Path) -> Path:
    """The ``src`` tree of commit :data:`BEFORE_RUN_STATE`, from the shipped archive (no git needed)."""
    assert OLD_SOURCE.is_file(), f"{OLD_SOURCE} is missing: it ships with the tests (see its README.md)"
    with tarfile.open(OLD_SOURCE) as archive:
        archive.extractall(dest, filter="data")
    assert (dest / "src" / "segtune" / "__init__.py").is_file()
    return dest / "src"


@pytest.fixture(scope="module")
def old_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("old")
    data = make_mask_folder(tmp / "data", n=6)
    settings = {**TINY_MODEL, "data.path": str(data), "data.test_size": 2, "train.out": str(tmp / "runs" / "r"),
                "train.epochs": 1, "train.max_iters_per_epoch": 2, "train.tensorboard": False,
                "train.val_loss": False, "train.lr": 0.001}
    env = {**os.environ, "PYTHONPATH": str(_old_source(tmp / "old"))}
    code = _TRAIN_THEN.replace("__SETTINGS__", repr(settings))
    image = data / "PNGImages" / "img001.png"  # the old code's own answers on it, read back by the tests below
    done = subprocess.run([sys.executable, "-c", code, str(image)], env=env, cwd=tmp, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp / "runs" / "r"
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    assert "run" not in ckpt and ckpt["config"]["data"]["path"] == str(data)  # really the old format
    return run, data


def test_an_old_run_evaluates_and_predicts_as_the_old_code_did(old_run: tuple[Path, Path]) -> None:
    """Today's code on the old run gives the old code's own answers: the same detections of the same image
    (a model trained for 2 steps scores every box low, so both keep every ranked box) and the same metrics."""
    run, data = old_run
    report = evaluate_checkpoint(run, device="cpu", amp="none")  # float32, as the old code ran
    assert report.num_images == 2 and set(report.metrics) == {"bbox", "segm"}
    old_metrics = json.loads((run.parents[1] / "old_metrics.json").read_text())
    for kind in ("bbox", "segm"):  # AP of 2 steps is about 0: the detections below are the sharper check
        assert report.metrics[kind] == pytest.approx(old_metrics[kind], abs=1e-6)
    images = split_images(run, "test")
    assert len(images) == 2 and all(Path(p).is_file() for p in images)
    old = torch.load(run.parents[1] / "old_prediction.pt", weights_only=True)
    predictor = Predictor.from_checkpoint(run, device="cpu", score_threshold=0.0, amp="none")
    set_min_score(predictor.model, 0.0)
    prediction = predictor(data / "PNGImages" / "img001.png")
    assert len(prediction) == len(old["scores"]) > 0
    assert all(name == "pedestrian" for name in prediction.names)
    assert torch.allclose(prediction.raw["boxes"], old["boxes"], atol=1e-3)
    assert torch.allclose(prediction.raw["scores"], old["scores"], atol=1e-5)


def test_an_old_run_exports_with_parity(old_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = old_run
    result = export_model(run, "onnx", out=tmp_path / "old.onnx", exporter="legacy")
    assert result.parity.ok, result.parity.problems
    meta = json.loads((tmp_path / "old.onnx.json").read_text())
    assert meta["classes"] == ["pedestrian"] and meta["outputs"] == ["boxes", "labels", "scores", "masks"]
    assert Predictor.from_checkpoint(result.path, score_threshold=0.0).classes == ["pedestrian"]


def test_an_old_run_resumes_where_it_stopped(old_run: tuple[Path, Path]) -> None:
    run, _ = old_run
    before = load_checkpoint(run / "weights" / "last.pt")
    result = train(configure(("resume", {"train.resume": str(run), "train.epochs": 2})))
    assert result.run_dir == run
    assert [r["epoch"] for r in result.history] == [0, 1]
    after = load_checkpoint(run / "weights" / "last.pt")
    assert after["epoch"] == 2 and after["step"] == before["step"] + 2
    assert after["split"] == before["split"]
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + both epochs
    assert json.loads(json.dumps(after["classes"])) == ["pedestrian"]
