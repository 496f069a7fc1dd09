"""The fixed ``cpu-scratch`` recipe against the same recipe fitted to the data, at the same time budget.

One command:  .venv/bin/python benchmarks/adaptive_recipe.py --data DIR --tag NAME [--minutes 5]
                  [--ways fixed,adaptive] [--set key=value ...] [--add]

Trains the ``cpu-scratch`` recipe from random initialisation for ``--minutes`` of training (its
schedule fitted to that budget, as the main job does) on the data set's split, two ways:

* ``fixed``: the recipe as it is: 320-px input, anchors 32-256 px with aspect ratios 1, 2, 3 on the
  stride-8 to 64 levels, 100 detections per image;
* ``adaptive``: the same recipe with ``model.adapt_to_data input_size,anchors,detections``: input size,
  anchors and detection counts derived from the training images (docs/training.md, "Fitted to the data").

For each way: the settings the run used, the steps it took, seconds per step, and bbox + segm AP on
the test split at the end. Prints a Markdown table and writes benchmarks/results/adaptive_recipe-TAG.json
(``--add`` keeps the rows of ways not run this time, so ways can be run one at a time). Run it on a
machine doing nothing else: the budget is wall-clock training time.

The public data sets used in docs/benchmarks.md are rebuilt by benchmarks/public_data.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from pathlib import Path
from typing import Any

from common import DATA, RESULTS, machine, parse_sets, write_result

from segtune.data.shapes import describe
from segtune.engine import configure
from segtune.engine.trainer import Trainer

WAYS: dict[str, dict[str, Any]] = {
    "fixed": {"model.adapt_to_data": []},
    "adaptive": {"model.adapt_to_data": ["input_size", "anchors", "detections"]},
}
#: The settings a fitted recipe may change, reported for every way.
SHOWN = ("min_size", "max_size", "fpn_levels", "anchor_sizes", "aspect_ratios", "box_detections_per_img",
         "box_batch_size_per_image", "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test")


def train_one(way: str, args: argparse.Namespace, extra: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    values = {"train.preset": "cpu-scratch", "data.path": args.data, "train.out": f"runs/benchmarks/adaptive_recipe/{args.tag}-{way}",
              "train.time_limit": args.minutes, "train.fit_to_time_limit": True, "train.seed": args.seed,
              "train.tensorboard": False, "train.report": False, **WAYS[way], **extra}
    cfg = configure(("adaptive_recipe", values))  # the preset under these, so the recipe's own values can be fitted
    trainer = Trainer(cfg)
    result = trainer.fit()
    metrics = result.last_metrics
    used = trainer.cfg.model
    row = {"way": way, "settings": {k: getattr(used, k) for k in SHOWN}, "steps": trainer.step,
           "s_per_step": round(trainer.clock.elapsed / max(1, trainer.step), 3),
           "bbox_AP": round(float(metrics["bbox"]["AP"]), 4),
           "segm_AP": round(float(metrics["segm"]["AP"]), 4) if "segm" in metrics else None,
           "train_images": len(trainer.split["train"]), "test_images": len(trainer.split["test"]),
           "run_dir": str(result.run_dir)}
    return row, trainer.data.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--tag", required=True, help="names the results file: adaptive_recipe-TAG.json")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--add", action="store_true", help="keep the rows of ways not run this time")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another setting for every way (e.g. data.format=coco)")
    args = parser.parse_args()
    logging.getLogger("segtune").setLevel(logging.INFO)  # each run's train.log as `segtune train` writes it
    extra = parse_sets(args.set)
    ways = args.ways.split(",")
    unknown = [w for w in ways if w not in WAYS]
    if unknown:
        sys.exit(f"--ways: {', '.join(unknown)} unknown; choose from {', '.join(WAYS)}")
    path = RESULTS / f"adaptive_recipe-{args.tag}.json"
    rows: list[dict[str, Any]] = []
    shapes = None
    if args.add and path.is_file():
        old = json.loads(path.read_text())
        rows, shapes = [r for r in old["rows"] if r["way"] not in ways], old.get("objects")
    for way in ways:
        print(f"\n## {args.tag}: {way}", flush=True)
        row, report = train_one(way, args, extra)
        rows.append(row)
        shapes = describe(report.box_sample) or shapes
    rows.sort(key=lambda r: list(WAYS).index(r["way"]))
    print(f"\n{args.tag}: {shapes}")
    print(f"\n| way | input | anchors | ratios | detections | RoIs | steps in {args.minutes:g} min | s / step "
          f"| bbox AP | segm AP |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["settings"]
        print(f"| {r['way']} | {s['min_size']}-{s['max_size']} | {s['anchor_sizes']} | {s['aspect_ratios']} | "
              f"{s['box_detections_per_img']} | {s['box_batch_size_per_image']} | {r['steps']} | {r['s_per_step']} "
              f"| {r['bbox_AP']:.3f} | {r['segm_AP'] or 0:.3f} |")
    out = write_result(path.name, {"date": datetime.date.today().isoformat(), "data": str(Path(args.data)),
                                   "minutes": args.minutes, "seed": args.seed, "settings": extra,
                                   "objects": shapes, "rows": rows})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
