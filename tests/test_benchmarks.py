"""The time-to-accuracy benchmark's own logic on a tiny synthetic data set: one run under a budget of a
few seconds (the curve it records, one point per step), and ``--combine`` of runs made by separate
invocations. Speed figures are the benchmark's job, never a test's."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL, make_mask_folder

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def tta(monkeypatch, tmp_path):
    """benchmarks/time_to_accuracy.py as a module, its results written under tmp_path."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    common = importlib.import_module("common")
    module = importlib.import_module("time_to_accuracy")
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    yield module
    sys.modules.pop("time_to_accuracy", None)


def test_a_run_under_a_budget_scores_every_step_once(tta, tmp_path, fake_training_clock, capsys):
    fake_training_clock(0.1)  # each reading of the training clock 0.1 s on: the same steps on any machine
    data = make_mask_folder(tmp_path / "data", n=6)
    sets = {**TINY_MODEL, "data.test_size": 2, "train.batch_size": 2, "train.repeat": 1, "data.workers": 0,
            "train.ema": True}
    run = tta.run_one("cpu-scratch", 0, minutes=0.08, eval_every=0.01, sets=sets, data=str(data),
                      out=str(tmp_path / "runs"))
    curve = run["curve"]
    steps = [p["step"] for p in curve]
    assert len(curve) >= 2 and steps == sorted(steps)
    # One point per step: where the timer and an epoch end scored the same step, it is listed once.
    assert len(steps) == len(set(steps)), steps
    assert run["final"]["step"] == run["steps"] == steps[-1]
    assert run["train_minutes"] > 0.0
    # With train.ema, every scoring scores the averaged weights too, timer points and epoch ends alike.
    assert set(run["final"]) == {"minutes", "step", "bbox_AP", "segm_AP", "ema_bbox_AP", "ema_segm_AP"}
    assert all("ema_segm_AP" in p for p in curve)
    assert run["segm_first_reached_min"].keys() == {f"{v:.1f}" for v in tta.LEVELS}
    assert run["ema_segm_first_reached_min"].keys() == run["segm_first_reached_min"].keys()
    assert Path(run["run_dir"], "weights", "best.pt").is_file()
    # The summary lists the one run twice: its own weights, and the same run scored on the average.
    summary = tta.summarise([run], 0.08)
    label = "cpu-scratch (" + ", ".join(f"{k}={v}" for k, v in sets.items()) + ")"
    assert list(summary) == [label, label + " EMA"]
    assert summary[label + " EMA"]["segm_AP"] == [run["final"]["ema_segm_AP"]]
    assert summary[label]["segm_AP"] == [run["final"]["segm_AP"]]
    assert f"| {label} EMA | 0 |" in capsys.readouterr().out


def test_combine_summarises_runs_written_apart_and_refuses_other_budgets(tta, tmp_path, capsys):
    def result(tag: str, seed: int, segm: float, budget: float = 60.0, overrides: dict | None = None) -> None:
        run = {"recipe": "cpu-scratch", "seed": seed, "budget_min": budget, "steps": 100 + seed, "overrides": overrides,
               "final": {"minutes": budget, "step": 100 + seed, "bbox_AP": segm + 0.1, "segm_AP": segm},
               "segm_first_reached_min": {"0.1": 5.0, "0.2": None, "0.3": None}}
        path = tmp_path / "results" / "time_to_accuracy" / f"{tag}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"budget_min": budget, "runs": [run]}))

    result("a", 0, 0.40)
    result("b", 1, 0.50)
    tta.combine(["a", "b"], "ab")
    combined = json.loads((tmp_path / "results" / "time_to_accuracy" / "ab.json").read_text())
    summary = combined["summary"]["cpu-scratch"]
    assert combined["combined"] == ["a", "b"] and summary["seeds"] == [0, 1]
    assert summary["segm_mean"] == pytest.approx(0.45) and summary["bbox_mean"] == pytest.approx(0.55)
    assert "0.450 ± 0.071 (n=2)" in capsys.readouterr().out

    # A variant run with overrides is summarised apart from the recipe as it stands, under its overrides.
    result("v", 0, 0.60, overrides={"train.augment": ["hflip", "lsj"]})
    tta.combine(["a", "b", "v"], "abv")
    summary = json.loads((tmp_path / "results" / "time_to_accuracy" / "abv.json").read_text())["summary"]
    assert summary["cpu-scratch"]["seeds"] == [0, 1]
    assert summary["cpu-scratch (train.augment=['hflip', 'lsj'])"]["segm_AP"] == [0.60]

    # --as names them all one variant (seeds whose schedule length was set apart); each run keeps its overrides.
    result("w", 1, 0.50, overrides={"train.augment": ["hflip", "lsj"], "train.epochs": 12})
    tta.combine(["v", "w"], "vw", label="lsj")
    combined = json.loads((tmp_path / "results" / "time_to_accuracy" / "vw.json").read_text())
    assert list(combined["summary"]) == ["lsj"] and combined["label"] == "lsj"
    assert combined["summary"]["lsj"]["seeds"] == [0, 1]
    assert combined["summary"]["lsj"]["segm_mean"] == pytest.approx(0.55)
    assert combined["runs"][1]["overrides"]["train.epochs"] == 12

    result("c", 2, 0.30, budget=30.0)
    with pytest.raises(SystemExit, match="different budgets"):
        tta.combine(["a", "c"], "ac")


def test_the_timer_scores_when_due_with_the_clock_paused_and_not_at_the_budgets_last_step(tta):
    """ScoreEvery after the real time-budget hook (a fitted end at step 10), the evaluation counted, not run."""
    from types import SimpleNamespace

    from segtune.engine.budget import Stopwatch, TimeBudgetHook
    from segtune.engine.hooks import Hook, HookList

    calls = []

    class CountingEvaluation(Hook):
        name = "evaluation"

        def score(self, trainer, model):
            calls.append(trainer.clock._since)  # None while the training clock is paused
            return SimpleNamespace(metrics={"bbox": {"AP": 0.25}, "segm": {"AP": 0.125}})

    budget = TimeBudgetHook(60.0)
    trainer = SimpleNamespace(clock=Stopwatch(), run=SimpleNamespace(max_steps=10, epochs=1), end_reason=None,
                              model=None)
    trainer.end_training = lambda reason: setattr(trainer, "end_reason", reason)
    trainer.hooks = HookList([budget, CountingEvaluation()])
    budget.before_train(trainer)
    scorer = tta.ScoreEvery(minutes=1.0)

    def step(n: int) -> None:  # as the trainer fires after_step: the built-in budget first
        budget.after_step(trainer, n, {})
        scorer.after_step(trainer, n, {})

    trainer.clock.start()
    step(1)  # not due: under a minute of training
    assert calls == []
    trainer.clock._elapsed = 150.0  # two and a half minutes in: due (and the 2-minute mark is passed too)
    step(2)
    assert calls == [None] and scorer.points == [{"minutes": 2.5, "step": 2, "bbox_AP": 0.25, "segm_AP": 0.125}]
    assert scorer.next == 180.0  # the next mark after the one scored, not the skipped 2-minute one
    step(3)  # not due again until minute 3
    assert len(calls) == 1
    trainer.clock._elapsed = 200.0
    step(10)  # due, but the budget ends here: the epoch end scores these weights
    assert len(calls) == 1 and trainer.end_reason is not None


@pytest.fixture
def bench(monkeypatch, tmp_path):
    """A benchmark script as a module, its results written under tmp_path: ``bench("adaptive_recipe")``."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    common = importlib.import_module("common")
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    loaded = []

    def load(name: str):
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "RESULTS", tmp_path / "results", raising=False)
        loaded.append(name)
        return module

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


def test_the_adaptive_recipe_benchmark_runs_both_ways_and_adds_rows(bench, tmp_path, monkeypatch,
                                                                   fake_training_clock, capsys):
    """Both ways at one tiny budget on a synthetic set; --add keeps the other way's row; the fitted way's
    settings are the ones its run used (the input and detection groups are given here, so only anchors fit)."""
    fake_training_clock(0.05)
    module = bench("adaptive_recipe")
    monkeypatch.chdir(tmp_path)
    data = make_mask_folder(tmp_path / "data", n=6)
    sets = [f"{k}={v}" for k, v in TINY_MODEL.items()] + ["data.test_size=2", "train.repeat=1"]
    argv = ["adaptive_recipe.py", "--data", str(data), "--tag", "tiny", "--minutes", "0.02"]
    for s in sets:
        argv += ["--set", s]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    result = json.loads((tmp_path / "results" / "adaptive_recipe-tiny.json").read_text())
    fixed, adaptive = result["rows"]
    assert (fixed["way"], adaptive["way"]) == ("fixed", "adaptive")
    assert fixed["settings"]["anchor_sizes"] == [32, 64, 128, 256]
    assert adaptive["settings"]["anchor_sizes"] != fixed["settings"]["anchor_sizes"]
    assert adaptive["settings"]["min_size"] == fixed["settings"]["min_size"] == 64  # given: not fitted
    assert result["objects"].startswith("object sizes")
    assert "| adaptive | 64-96 |" in capsys.readouterr().out

    monkeypatch.setattr(sys, "argv", argv + ["--ways", "fixed", "--add"])
    module.main()
    again = json.loads((tmp_path / "results" / "adaptive_recipe-tiny.json").read_text())
    assert [r["way"] for r in again["rows"]] == ["fixed", "adaptive"]
    assert again["rows"][1] == adaptive


def test_the_fast_path_benchmark_compares_two_seeds_a_side(bench):
    module = bench("fast_path")
    losses = [3.0 - 0.01 * i for i in range(60)]

    def row(way: str, bbox: float, segm: float, shift: float = 0.0) -> dict:
        return {"way": way, "bbox_AP": bbox, "segm_AP": segm, "losses": [x + shift for x in losses]}

    rows = [row("fp32", 0.25, 0.20), row("fp32-seed1", 0.21, 0.18, 0.05), row("fast", 0.21, 0.19, 0.01),
            row("fast-seed1", 0.24, 0.19, 0.02)]
    pair = module.two_seed_comparison(rows)
    assert pair["bbox_AP"] == {"fp32_mean": 0.23, "fast_mean": 0.225, "difference": -0.005,
                               "fp32_seed_spread": 0.04, "fast_seed_spread": 0.03}
    assert pair["mean_curve_gap"] == pytest.approx(0.01 - 0.0, abs=1e-4) and pair["within_noise"] is True
    rows[3] = row("fast-seed1", 0.10, 0.19)
    assert module.two_seed_comparison(rows)["within_noise"] is False
    assert module.two_seed_comparison(rows[:3]) is None


def test_public_data_builds_the_aerial_cars_set_from_a_git_snapshot(bench, tmp_path):
    """A made-up repository of the aerial-cars layout (images + YOLO box labels at the root, aerial.names),
    built from its git directory at a commit, read back by segtune's COCO reader."""
    import subprocess

    import numpy as np
    from PIL import Image

    from segtune.data.coco import CocoDataset

    module = bench("public_data")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "aerial.names").write_text("car\ntruck\n")
    Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(repo / "a.jpg")
    (repo / "a.txt").write_text("0 0.5 0.5 0.1 0.2\n1 0.25 0.5 0.1 0.2\n")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(repo / "b.png")  # no label: left out
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "data"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    module.main(["aerial_cars", str(repo / ".git"), "--root", str(tmp_path / "data"), "--commit", commit])
    ds = CocoDataset(tmp_path / "data" / "aerial_cars" / "annotations.json")
    assert len(ds) == 1 and ds.classes == ["car", "truck"]
    _, target = ds.load(0)
    assert target["labels"].tolist() == [1, 2]
    assert target["boxes"].tolist() == [[45.0, 20.0, 55.0, 30.0], [20.0, 20.0, 30.0, 30.0]]


def test_the_peer_benchmark_turns_masks_into_polygons_and_scores_the_ground_truth_ap_1(bench, pennfudan, capsys):
    """``peer_ultralytics.py --self-check`` (no peer venv): a 4-part mask survives mask -> YOLO polygon ->
    mask, and on the main job's 120/50 Penn-Fudan split every test instance does too and the ground truth,
    passed through the peer's results conversion, scores AP 1 by segtune's evaluator."""
    module = bench("peer_ultralytics")
    module.self_check(str(pennfudan))
    out = capsys.readouterr().out
    assert "synthetic 4-part mask -> polygon -> mask IoU" in out
    assert "split 120/50; 126 test instances" in out and "bbox AP 1.000, segm AP 1.000: passed" in out
