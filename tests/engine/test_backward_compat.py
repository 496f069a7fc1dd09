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

from segtune.checkpoint import load_checkpoint
from segtune.engine import configure, train
from segtune.evaluation import evaluate_checkpoint
from segtune.export import export_model
from segtune.predict import Predictor, split_images
from tests.conftest import TINY_MODEL, make_mask_folder

REPO = Path(__file__).resolve().parents[2]
#: The last commit whose checkpoints hold the data path and class names in their config, with no
#: run-state record (checkpoint format 1 as first written).
BEFORE_RUN_STATE = "e4c4711"
#: ``git archive e4c4711 src | xz -9e`` (tests/fixtures/segtune_e4c4711/README.md).
OLD_SOURCE = REPO / "tests" / "fixtures" / f"segtune_{BEFORE_RUN_STATE}" / "src.tar.xz"

_TRAIN_THEN = """
import sys, segtune
settings = dict(__SETTINGS__)
segtune.train(segtune.configure(("old run", settings)))
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
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp / "runs" / "r"
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    assert "run" not in ckpt and ckpt["config"]["data"]["path"] == str(data)  # really the old format
    return run, data


def test_an_old_run_evaluates_and_predicts(old_run: tuple[Path, Path]) -> None:
    run, _ = old_run
    report = evaluate_checkpoint(run, device="cpu")
    assert report.num_images == 2 and set(report.metrics) == {"bbox", "segm"}
    images = split_images(run, "test")
    assert len(images) == 2 and all(Path(p).is_file() for p in images)
    prediction = Predictor.from_checkpoint(run, device="cpu", score_threshold=0.0)(images[0])
    assert prediction.image.shape[0] == 3 and all(name == "pedestrian" for name in prediction.names)


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
