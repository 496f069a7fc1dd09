"""The benchmark scripts' own logic on tiny synthetic data (time to accuracy: one run under a budget of a
few seconds, ``--combine``; the adaptive recipe, the fast path's comparison, public data, the peer's
conversion), and that every figure is traceable: each results file is stamped with machine, date and
command and holds its script's keys, and each script the docs quote writes one. Speed figures are the
benchmarks' job, never a test's."""

from __future__ import annotations

import ast
import datetime
import fnmatch
import importlib
import json
import re
import shlex
import sys
import warnings
from pathlib import Path

import pytest

from tests.conftest import SMALL_MODEL, TINY_MODEL, make_mask_folder

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STAMP = {"machine", "date", "command"}

# Results file (a pattern under benchmarks/results/) -> the script that writes it, and the keys that script
# writes besides the stamp. A file that matches no pattern fails: add its script's schema here.
SCHEMAS = {
    "adaptive_recipe-*.json": ("adaptive_recipe.py", {"data", "minutes", "seed", "settings", "objects", "rows"}),
    "box_convention.json": ("box_convention.py", {"checkpoint", "test_images", "metrics"}),
    "data_cache.json": ("data_cache.py", {"images", "size", "rows"}),
    "evaluation.json": ("evaluation.py", {"faster_coco_eval", "pycocotools", "repeat", "rows"}),
    "fast_path-*.json": ("fast_path.py", {"data", "steps", "settings", "rows"}),
    "inference.json": ("inference.py", {"images_timed", "score_threshold", "rows"}),
    "large_coco.json": ("large_coco.py", {"images", "side_px", "runs"}),
    "models_cpu.json": ("models_cpu.py", {"min_size", "iters", "rows"}),
    "peer_ultralytics-*.json": ("peer_ultralytics.py", {"minutes", "threads", "torch_threads", "epochs", "bbox", "segm",
                                                        "inference_ms_per_image"}),
    "predict_stream.json": ("predict_stream.py", {"rows"}),
    "report_time.json": ("report_time.py", {"run", "test_images", "seconds", "median_s", "size_mb"}),
    "time_to_accuracy/*.json": ("time_to_accuracy.py", {"budget_min", "summary", "runs"}),
    "recipe_search.jsonl": ("time_to_accuracy.py", {"tag", "recipe", "seed", "budget_min", "steps", "final"}),
    "train_throughput*.json": ("train_throughput.py", {"recipe", "batch", "iters", "s_per_iter", "segtune_over_plain"}),
}

# Files committed before write_result stamped date and command: each carries a "provenance" key (the commit
# that holds it and the command that regenerates it) instead. Re-running a script stamps its file; then drop
# the name here (a warning says so).
PREDATE_STAMPING = set("""
    adaptive_recipe-aerial_cars.json adaptive_recipe-dsb2018_nuclei-input-anchors.json
    adaptive_recipe-dsb2018_nuclei.json adaptive_recipe-feral_cats.json adaptive_recipe-pennfudan.json
    box_convention.json evaluation.json fast_path-feral_cats.json fast_path-nanoshapes.json fast_path-pennfudan.json
    inference.json models_cpu.json predict_stream.json train_throughput.json train_throughput-cpu-scratch.json
    peer_ultralytics-10min-2.json peer_ultralytics-10min-default.json peer_ultralytics-60min-2.json
    peer_ultralytics-60min-default.json
    time_to_accuracy/final-3seeds.json time_to_accuracy/final-comparison.json time_to_accuracy/final-lsj-cp-3seeds.json
    time_to_accuracy/final-seed0.json time_to_accuracy/final-seeds12.json time_to_accuracy/final-tutorial.json
    time_to_accuracy/h60-fast-3seeds.json time_to_accuracy/h60-fast-ema-seed0.json
    time_to_accuracy/h60-fast-ema-seed1.json time_to_accuracy/h60-fast-ema200-seed0.json
    time_to_accuracy/h60-fast-ema200-seed1.json time_to_accuracy/h60-fast-ema200-seed2.json
    time_to_accuracy/h60-lsj-cp-lr2e-3.json
    time_to_accuracy/h60-lsj-cp-photo-3600-seed1.json time_to_accuracy/h60-lsj-cp-photo-3600-seed2.json
    time_to_accuracy/h60-lsj-cp-photo.json time_to_accuracy/h60-lsj-cp-seed1.json time_to_accuracy/h60-lsj-cp-seed2.json
    time_to_accuracy/h60-lsj-cp.json time_to_accuracy/lsj-cp-photo-2seeds.json time_to_accuracy/lsj-cp-photo-3seeds.json
    time_to_accuracy/s8-base.json time_to_accuracy/s8-bf16-rois64-adamw.json time_to_accuracy/s8-bf16-rois64.json
    time_to_accuracy/s8-bf16.json
""".split())
# The append-only log's lines written before stamping (never rewritten); every later line is stamped.
LOG_LINES_BEFORE_STAMPING = {"recipe_search.jsonl": 20}

# Scripts the docs name that print no figures, and scripts whose figures await a run that writes their file.
NO_FIGURES = {"public_data.py": "rebuilds the public data sets", "common.py": "what the scripts share"}
AWAITING_RUN = {
    "large_coco.py": "its figures were printed, never written; docs mark them not reproduced",
    "report_time.py": "its figures were printed, never written; docs mark them not reproduced",
    "data_cache.py": "writes data_cache.json, never committed; docs/training.md quotes no figure of it yet",
}


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
    sets = {**SMALL_MODEL, "data.test_size": 2, "train.batch_size": 2, "train.repeat": 1, "data.workers": 0,
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
    from segtune.engine import budget as budget_module

    monkeypatch.setattr(budget_module, "CALIBRATE_STEPS", (1, 2))  # fit the schedule after 2 steps, not 25
    fake_training_clock(0.05)
    module = bench("adaptive_recipe")
    monkeypatch.chdir(tmp_path)
    data = make_mask_folder(tmp_path / "data", n=6)
    sets = [f"{k}={v}" for k, v in TINY_MODEL.items()] + ["data.test_size=2", "train.repeat=1"]  # 5 FPN levels to fit
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


def results_files() -> list[str]:
    return sorted(p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*") if p.is_file() and p.suffix != ".tmp")


def schema(name: str) -> tuple[str, set[str]]:
    matches = [v for pattern, v in SCHEMAS.items() if fnmatch.fnmatch(name, pattern)]
    assert len(matches) == 1, f"benchmarks/results/{name}: {len(matches)} schemas match (add one to SCHEMAS)"
    return matches[0]


def check_stamp(where: str, record: dict, script: str) -> None:
    assert STAMP <= record.keys(), f"{where}: no {sorted(STAMP - record.keys())}"
    datetime.datetime.fromisoformat(record["date"])
    assert shlex.split(record["command"])[0] == f"benchmarks/{script}", f"{where}: command {record['command']!r}"


@pytest.mark.parametrize("name", results_files())
def test_each_results_file_is_stamped_and_holds_its_scripts_keys(name):
    script, keys = schema(name)
    text = (RESULTS / name).read_text()
    if name.endswith(".jsonl"):
        for i, record in enumerate(json.loads(line) for line in text.splitlines()):
            assert keys <= record.keys(), f"{name} line {i + 1}: no {sorted(keys - record.keys())}"
            if i >= LOG_LINES_BEFORE_STAMPING.get(name, 0):
                check_stamp(f"{name} line {i + 1}", record, script)
        return
    result = json.loads(text)
    assert keys <= result.keys(), f"{name}: no {sorted(keys - result.keys())} (what {script} writes)"
    if name not in PREDATE_STAMPING or STAMP <= result.keys():
        check_stamp(name, result, script)
        if name in PREDATE_STAMPING:
            warnings.warn(f"{name} is stamped now: drop it from PREDATE_STAMPING", stacklevel=1)
        return
    assert "machine" in result and "re-run `" in result.get("provenance", ""), f"{name}: machine and provenance"
    # Rows kept from an earlier run carry their own date and machine, or say why not.
    for row in result.get("rows", []) if name == "inference.json" else []:
        assert {"date", "machine"} <= row.keys() or "provenance" in row, row


def test_the_allowlists_name_files_that_exist():
    files = set(results_files())
    assert PREDATE_STAMPING <= files, sorted(PREDATE_STAMPING - files)
    assert LOG_LINES_BEFORE_STAMPING.keys() <= files


def scripts_the_docs_name() -> set[str]:
    text = "\n".join(p.read_text() for p in DOCS)
    return {name for name in re.findall(r"\b(\w+\.py)\b", text) if (BENCHMARKS / name).is_file()}


def writes_results(script: str) -> bool:
    calls = [n.func for n in ast.walk(ast.parse((BENCHMARKS / script).read_text())) if isinstance(n, ast.Call)]
    return any(isinstance(f, ast.Name) and f.id in ("write_result", "append_record") for f in calls)


@pytest.mark.parametrize("script", sorted(scripts_the_docs_name() - NO_FIGURES.keys()))
def test_each_script_the_docs_quote_writes_a_results_file(script):
    assert writes_results(script), f"benchmarks/{script} prints figures the docs quote but calls no write_result"
    patterns = [p for p, (s, _) in SCHEMAS.items() if s == script]
    assert patterns, f"benchmarks/{script}: no schema in SCHEMAS"
    source = (BENCHMARKS / script).read_text()
    assert all(re.split(r"[*]|\.jsonl?$", p)[0] in source for p in patterns), "the script names its files"
    written = [n for n in results_files() if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if script in AWAITING_RUN and written:
        warnings.warn(f"{written} exist now: drop benchmarks/{script} from AWAITING_RUN", stacklevel=1)
    assert written or script in AWAITING_RUN, f"benchmarks/{script}: no results file under benchmarks/results/"


def test_every_results_path_the_docs_quote_exists():
    for doc in DOCS:
        for quoted in re.findall(r"benchmarks/results/[\w./*-]*\w", doc.read_text()):
            assert list(ROOT.glob(quoted)), f"{doc.name} quotes {quoted}, which does not exist"


def test_write_result_and_append_record_stamp_machine_date_and_command(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    common = importlib.import_module("common")
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "demo.py"), "--tag", "a b"])
    here, today = common.machine(), datetime.date.today().isoformat()

    written = json.loads(common.write_result("demo.json", {"rows": [1]}).read_text())
    assert written == {"machine": here, "date": today, "command": "benchmarks/demo.py --tag 'a b'", "rows": [1]}
    # A caller's date (the work's) stays; a caller's machine line that differs (another process's) moves aside.
    theirs = json.loads(common.write_result("sub/demo.json", {"date": "2026-12-04T16:41:50+00:00", "machine": "peer",
                                                              "command": "forged"}).read_text())
    assert (theirs["machine"], theirs["work_machine"]) == (here, "peer")
    assert theirs["date"] == "2026-12-04T16:41:50+00:00" and theirs["command"] == written["command"]

    common.append_record("log.jsonl", {"tag": "x"})
    common.append_record("log.jsonl", {"tag": "y"})
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["tag"], r["machine"], r["date"], r["command"]) for r in lines] == [
        (t, here, today, written["command"]) for t in "xy"]
    with pytest.raises(ValueError, match=r"\.json"):
        common.write_result("predict_stream", {})
