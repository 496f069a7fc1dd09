"""From scratch under a wall-clock budget: AP reached, and when, by the tutorial recipe and segtune's CPU recipe.

One command:  .venv/bin/python benchmarks/time_to_accuracy.py [--minutes 60] [--seeds 0 1 2]

Each recipe trains from random initialisation (no weights are downloaded) on the same Penn-Fudan
train/test split, the main job's 120/50 (``data.test_size`` 50, pinned here: the config's default
became a fifth of the images on 2026-12-01, and runs made with it are on another split), with
``train.time_limit`` = ``--minutes`` of training time (evaluation is not counted). The recipes:

* ``tutorial``: the torchvision tutorial's Mask R-CNN R50-FPN, 800 px, batch 2, SGD lr 0.005, StepLR(3)
  over 10 epochs, flips; cut by the budget wherever it is (on 2 CPU cores its 10 epochs take ~4 h);
* ``cpu-scratch``: segtune's preset for no weights and no GPU (``segtune train --preset cpu-scratch``),
  whose schedule is fitted to the budget.

The test split is scored (COCO bbox + segm AP) at the end of every epoch and, between, every
``--eval-every`` minutes of training (the clock is paused while scoring). Prints, per recipe and
seed, the AP at the budget and the training minutes at which segm and bbox AP first reached 0.1,
0.2, ...; then mean and spread over the seeds. Writes benchmarks/results/time_to_accuracy/TAG.json
and appends every run to benchmarks/results/recipe_search.jsonl (the audit log of the recipe search:
``--set model.min_size=384 --tag try-384`` runs a variant).

With ``--set train.ema=true`` every scoring also scores the run's moving average of the weights (the
clock still paused), and the summary lists the same runs a second time as the variant's ``EMA`` row:
one run measures the weights and their average.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from typing import Any

import yaml

from common import DATA, RESULTS, append_record, parse_sets, write_result
from segtune.config import PRESETS
from segtune.engine.hooks import Hook
from segtune.engine.presets import configure
from segtune.engine.trainer import Trainer

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
RECIPES = {
    # The tutorial's settings (the config defaults), without the COCO weights nobody can fetch here.
    "tutorial": {"train.preset": "tutorial", "model.weights": "none", "model.weights_backbone": "none"},
    "cpu-scratch": {"train.preset": "cpu-scratch"},
}

# The main job's split (scripts/main.sh --test-size 50), which every figure of the hour is measured on.
SPLIT = {"data.test_size": 50}


class ScoreEvery(Hook):
    """Scores the test split every ``minutes`` of training time, with the training clock paused."""

    main_process_only = True

    def __init__(self, minutes: float) -> None:
        self.every = minutes * 60.0
        self.next = self.every
        self.points: list[dict[str, Any]] = []

    def after_step(self, trainer: Any, step: int, losses: dict[str, float]) -> None:
        # Where the budget ends training, the epoch end scores the same weights: no need to score twice.
        if trainer.clock.elapsed < self.next or trainer.end_reason is not None:
            return
        with trainer.clock.paused():
            evaluation, ema = trainer.hooks.get("evaluation"), trainer.hooks.get("ema")
            report = evaluation.score(trainer, trainer.model)
            ema_metrics = evaluation.score(trainer, ema.ema.module).metrics if ema is not None else None
            self.points.append(point(trainer.clock.elapsed, step, report.metrics, ema_metrics))
            logging.getLogger("segtune.train").info("benchmark score at %.1f min (step %d): %s", self.points[-1]["minutes"],
                                                    step, fmt(self.points[-1]))
        while self.next <= trainer.clock.elapsed:
            self.next += self.every


def point(seconds: float, step: int, metrics: dict[str, dict[str, float]],
          ema: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """One scoring of the test split; with ``train.ema``, the averaged weights' AP beside (``ema_segm_AP``)."""
    return {"minutes": round(seconds / 60.0, 2), "step": step,
            **{f"{kind}_AP": round(float(m["AP"]), 4) for kind, m in metrics.items()},
            **{f"ema_{kind}_AP": round(float(m["AP"]), 4) for kind, m in (ema or {}).items()}}


def fmt(p: dict[str, Any]) -> str:
    return "  ".join(f"{k} {p[k]:.3f}" for k in ("bbox_AP", "segm_AP", "ema_bbox_AP", "ema_segm_AP") if k in p)


def first_reached(curve: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """Training minutes at which ``key`` first reached each of :data:`LEVELS` (None: never)."""
    return {f"{level:.1f}": next((p["minutes"] for p in curve if p.get(key, 0.0) >= level), None) for level in LEVELS}


def run_one(recipe: str, seed: int, minutes: float, eval_every: float, sets: dict[str, Any], data: str,
            out: str) -> dict[str, Any]:
    values = {**RECIPES[recipe], **SPLIT, "data.path": data, "train.out": out, "train.seed": seed,
              "train.time_limit": minutes, "train.tensorboard": False, **sets}
    cfg = configure(("benchmark", values))
    scorer = ScoreEvery(eval_every)
    trainer = Trainer(cfg, hooks=[scorer])
    wall = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - wall
    # One point per step, in step order: where the timer and an epoch end scored the same step, the epoch's.
    by_step = {p["step"]: p for p in scorer.points}
    by_step.update({r["step"]: point(r["train_time_s"], r["step"], r["metrics"], r.get("ema")) for r in result.history})
    curve = [by_step[step] for step in sorted(by_step)]
    best = next(r for r in result.history if r["epoch"] == result.best_epoch)  # the epoch best.pt holds
    last = point(result.history[-1]["train_time_s"], result.history[-1]["step"], result.last_metrics,
                 result.history[-1].get("ema"))
    return {
        "recipe": recipe, "seed": seed, "budget_min": minutes, "overrides": sets, "run_dir": str(result.run_dir),
        "config": yaml.safe_load((result.run_dir / "config.yaml").read_text()),
        "steps": trainer.step, "train_minutes": last["minutes"], "wall_minutes": round(wall / 60.0, 2),
        "final": last, "best": point(best["train_time_s"], best["step"], result.best_metrics) | {"epoch": result.best_epoch},
        "curve": curve,
        "segm_first_reached_min": first_reached(curve, "segm_AP"),
        "bbox_first_reached_min": first_reached(curve, "bbox_AP"),
        **({"ema_segm_first_reached_min": first_reached(curve, "ema_segm_AP")} if "ema_segm_AP" in last else {}),
    }


def ema_views(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run, then (where it kept an EMA of the weights) the same run as scored on the averaged
    weights, as a variant of its own named ``... EMA``: one run measures both."""
    views = []
    for run in runs:
        views.append(run)
        if "ema_segm_AP" in run["final"]:
            final = {k[4:]: v for k, v in run["final"].items() if k.startswith("ema_")}
            views.append({**run, "ema_view": True, "final": {**run["final"], **final},
                          "segm_first_reached_min": run["ema_segm_first_reached_min"]})
    return views


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def overrides_text(run: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in (run.get("overrides") or {}).items())


def show_log() -> None:
    """Print the audit log of every run (benchmarks/results/recipe_search.jsonl) as a Markdown table."""
    path = RESULTS / "recipe_search.jsonl"
    print("| tag | recipe | seed | overrides | budget (min) | steps | s/step | bbox AP | segm AP |")
    print("|---|---|---|---|---|---|---|---|---|")
    for line in path.read_text().splitlines():
        r = json.loads(line)
        sets = overrides_text(r) or "-"
        rate = 60 * r["train_minutes"] / max(1, r["steps"])
        print(f"| {r['tag']} | {r['recipe']} | {r['seed']} | {sets} | {r['budget_min']:g} | {r['steps']} | "
              f"{rate:.2f} | {r['final'].get('bbox_AP', 0):.3f} | {r['final'].get('segm_AP', 0):.3f} |")


def variant(run: dict[str, Any]) -> str:
    """The recipe a run trained, with the overrides it ran under: ``cpu-scratch`` or ``cpu-scratch (k=v, ...)``."""
    sets = overrides_text(run)
    name = f"{run['recipe']} ({sets})" if sets else run["recipe"]
    return f"{name} EMA" if run.get("ema_view") else name


def summarise(runs: list[dict[str, Any]], minutes: float, label: str | None = None) -> dict[str, Any]:
    """Print, per recipe variant (recipe + overrides), the AP at the end of the budget over the seeds
    (mean ± sd) and when each seed first reached segm AP 0.1 / 0.2 / 0.3; return the same as a dict.
    ``label`` names every run as one variant (their own overrides stay in the runs)."""
    summary = {}
    runs = ema_views(runs)
    variant_of = (lambda run: label + (" EMA" if run.get("ema_view") else "")) if label else variant
    print(f"\n| recipe | seeds | segm AP at {minutes:g} min | bbox AP | steps | segm AP 0.1 / 0.2 / 0.3 first at (min) |")
    print("|---|---|---|---|---|---|")
    for recipe in dict.fromkeys(variant_of(r) for r in runs):
        mine = [r for r in runs if variant_of(r) == recipe]
        segm = [r["final"].get("segm_AP", 0.0) for r in mine]
        bbox = [r["final"].get("bbox_AP", 0.0) for r in mine]
        reached = "; ".join(" / ".join("-" if r["segm_first_reached_min"][k] is None else f"{r['segm_first_reached_min'][k]:.0f}"
                                       for k in ("0.1", "0.2", "0.3")) for r in mine)
        summary[recipe] = {"seeds": [r["seed"] for r in mine], "segm_AP": segm, "bbox_AP": bbox,
                           "segm_mean": statistics.mean(segm), "bbox_mean": statistics.mean(bbox)}
        print(f"| {recipe} | {', '.join(str(r['seed']) for r in mine)} | {spread(segm)} | {spread(bbox)} | "
              f"{', '.join(str(r['steps']) for r in mine)} | {reached} |")
    return summary


def combine(tags: list[str], out_tag: str, label: str | None = None) -> None:
    """Summarise runs written by earlier invocations (e.g. one seed per session) as one result file;
    with ``label``, as one variant of that name (e.g. seeds whose schedule length was set in different ways)."""
    results = [json.loads((RESULTS / "time_to_accuracy" / f"{tag}.json").read_text()) for tag in tags]
    budgets = {r["budget_min"] for r in results}
    if len(budgets) != 1:
        sys.exit(f"--combine: the runs have different budgets {sorted(budgets)}; compare like with like")
    runs = [run for result in results for run in result["runs"]]
    summary = summarise(runs, budgets.pop(), label)
    path = write_result(f"time_to_accuracy/{out_tag}.json", {"budget_min": results[0]["budget_min"], "combined": tags,
                                                             "label": label, "summary": summary, "runs": runs})
    print(f"\nwrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="training-time budget per run (default 60)")
    parser.add_argument("--recipes", default="tutorial,cpu-scratch", help="comma-separated: " + ", ".join(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-every", type=float, default=10.0, help="score the test split every this many "
                        "training minutes, besides every epoch's end (default 10)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every recipe (a variant to try), e.g. model.min_size=384")
    parser.add_argument("--tag", default="default", help="name of the result file and of the runs in the log")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--out", default="runs/benchmarks/time_to_accuracy", help="run folders (weights, logs)")
    parser.add_argument("--show-log", action="store_true", help="only print the log of every run so far as a table")
    parser.add_argument("--combine", nargs="+", metavar="TAG", help="only summarise the result files of these tags "
                        "(runs made by separate invocations, e.g. one seed at a time) into results/time_to_accuracy/"
                        "TAG.json for --tag")
    parser.add_argument("--as", dest="label", metavar="NAME", help="with --combine: summarise every run as one "
                        "variant called NAME, whatever its overrides (they stay in the file, run by run)")
    args = parser.parse_args()
    if args.label and not args.combine:
        parser.error("--as only goes with --combine")
    if args.show_log:
        show_log()
        return
    if args.combine:
        combine(args.combine, args.tag, args.label)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        sys.exit(f"--recipes: unknown {unknown}; choose from {', '.join(RECIPES)}")
    sets = parse_sets(args.set)
    runs = []
    for recipe in recipes:
        for seed in args.seeds:
            print(f"== {recipe}, seed {seed}, {args.minutes:g} min{' ' + str(sets) if sets else ''}", flush=True)
            run = run_one(recipe, seed, args.minutes, args.eval_every, sets, args.data, f"{args.out}/{args.tag}")
            run["tag"] = args.tag
            runs.append(run)
            append_record("recipe_search.jsonl", {k: v for k, v in run.items() if k != "curve"})
            print(f"   {run['steps']} steps in {run['train_minutes']:.1f} min: {fmt(run['final'])}", flush=True)
    summary = summarise(runs, args.minutes)
    path = write_result(f"time_to_accuracy/{args.tag}.json", {"budget_min": args.minutes, "overrides": sets,
                                                              "presets": {r: PRESETS.get(RECIPES[r]["train.preset"], {})
                                                                          for r in recipes},
                                                              "summary": summary, "runs": runs})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
