"""CPU inference of the tutorial model and the ``cpu-scratch`` model, every way segtune runs them.

One command:  .venv/bin/python benchmarks/inference.py [--tutorial CKPT] [--fast CKPT] [--images 20]

For each model, :func:`segtune.export.benchmark.benchmark_run` (what ``segtune benchmark RUN`` does):
eager fp32, eager bf16 (CPUs with native bfloat16 only), TorchScript and ONNX Runtime (exported and
checked first), each with its bbox + segm AP on the model's whole test split, and the median latency
of one image (batch 1, after two warm-up images) over ``--images`` test images with images/s, at two
settings: *evaluation* (every detection the model keeps, up to 100, scores >= 0.05, masks pasted at
image size: what AP needs, and Ultralytics' "evaluation settings") and *prediction* (scores >=
``--score-threshold``, predict's default 0.5, dropped inside the model so only kept detections get
masks: what ``segtune predict`` does, comparable to Ultralytics' ``predict()`` at its default
confidence). The speed-up of each path is against eager fp32 of the same model at the same setting.

Models (segtune checkpoints):

* ``tutorial``: Mask R-CNN R50-FPN at 800 px (the tutorial's model): ``--tutorial CKPT``. Without one,
  a checkpoint of random weights on Penn-Fudan's 120/50 split is written under
  ``runs/benchmarks/inference/`` (COCO weights cannot be downloaded here and an hour from scratch
  gives AP 0.007): its speed is real, its AP is 0 and only shows that every path agrees.
* ``cpu-scratch``: ``--fast CKPT``; by default the newest main-job run (``runs/pennfudan-*``).

Writes benchmarks/results/inference.json (and ``benchmark.json`` in each run folder); with ``--models``
naming one model, the other's rows are kept from the file as they were (each row has its date and machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import torch

from common import DATA, RESULTS, machine, write_result
from segtune.checkpoint import RunState, save_checkpoint
from segtune.config import DataConfig
from segtune.data import make_split, open_dataset
from segtune.engine import configure
from segtune.export.benchmark import benchmark_run, markdown
from segtune.models import build_from_config
from segtune.run_files import best_checkpoint

RANDOM_TUTORIAL = Path("runs/benchmarks/inference/tutorial-random")


def random_tutorial(data: str) -> Path:
    """A checkpoint of the tutorial model with random weights, on Penn-Fudan's tutorial split (120 / 50)."""
    path = best_checkpoint(RANDOM_TUTORIAL)
    if path.is_file():
        return RANDOM_TUTORIAL
    cfg = configure(("benchmark", {"data.path": data, "data.test_size": 50, "model.weights": "none",
                                   "model.weights_backbone": "none"}))
    full = open_dataset(DataConfig(path=data))
    torch.manual_seed(0)
    model = build_from_config(cfg.model, num_classes=len(full.classes) + 1, classes=list(full.classes),
                              load_weights=False)
    ids = list(range(1, len(full.classes) + 1))
    state = RunState(data_path=str(Path(data).resolve()), data_format=cfg.data.format, classes=list(full.classes),
                     category_ids=ids, epochs=0)
    save_checkpoint(path, {"model": model.state_dict(), "epoch": 0, "step": 0, "classes": list(full.classes),
                           "category_ids": ids, "config": cfg.to_dict(), "run": state.to_dict(),
                           "split": make_split(full.all_files, 50, cfg.data.split_seed), "metrics": {}})
    return RANDOM_TUTORIAL


def newest_main_run() -> Path | None:
    runs = [p.parent.parent for p in Path("runs").glob("pennfudan-*/weights/best.pt")]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tutorial", help="a run folder or checkpoint of the tutorial model (default: random weights)")
    parser.add_argument("--fast", help="a run folder or checkpoint of the cpu-scratch model (default: newest main job)")
    parser.add_argument("--images", type=int, default=20, help="test images timed per path and setting (default 20)")
    parser.add_argument("--paths", default="eager,eager-bf16,torchscript,onnx")
    parser.add_argument("--models", default="tutorial,cpu-scratch")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="prediction settings (default 0.5)")
    parser.add_argument("--data", default=DATA)
    args = parser.parse_args()
    sources = {"tutorial": Path(args.tutorial) if args.tutorial else None,
               "cpu-scratch": Path(args.fast) if args.fast else newest_main_run()}
    today = datetime.date.today().isoformat()
    models = args.models.split(",")
    # The rows of models not run now are kept from the last results (each row names its date and machine).
    previous = RESULTS / "inference.json"
    results: list[dict[str, Any]] = [r for r in (json.loads(previous.read_text()).get("rows", [])
                                                 if previous.is_file() else []) if r.get("model") not in models]
    for kind in models:
        source = sources[kind]
        if source is None:
            if kind != "tutorial":
                sys.exit("no cpu-scratch run: pass --fast RUN or run scripts/main.sh first")
            source = random_tutorial(args.data)
        print(f"\n## {kind}: {source}", flush=True)
        rows = benchmark_run(source, images=args.images, paths=tuple(args.paths.split(",")),
                             predict_threshold=args.score_threshold)
        print(markdown(rows, args.score_threshold), flush=True)
        eager = rows[0] if rows and rows[0].path == "eager" else None
        for row in rows:
            record = {"model": kind, "checkpoint": str(source), "date": today, "machine": machine(),
                      **dataclasses.asdict(row)}
            if eager and row.images_per_s:
                record["speedup"] = round(row.images_per_s / eager.images_per_s, 2)
                record["predict_speedup"] = round((row.predict_images_per_s or 0) / (eager.predict_images_per_s or 1), 2)
                record["segm_AP_minus_eager"] = round((row.segm_ap or 0) - (eager.segm_ap or 0), 4)
                record["bbox_AP_minus_eager"] = round((row.bbox_ap or 0) - (eager.bbox_ap or 0), 4)
            results.append(record)
    print("\n| model | path | status | bbox AP | segm AP | ms (eval) | speed-up | ms (score >= "
          f"{args.score_threshold:g}) | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        def f(key: str, fmt: str) -> str:
            return "–" if r.get(key) is None else format(r[key], fmt)
        print(f"| {r['model']} | {r['path']} | {r['status'][:40]} | {f('bbox_ap', '.3f')} | {f('segm_ap', '.3f')} | "
              f"{f('ms_per_image', '.0f')} | {f('speedup', '.2f')}x | {f('predict_ms_per_image', '.0f')} | "
              f"{f('predict_speedup', '.2f')}x |")
    results.sort(key=lambda r: ["tutorial", "cpu-scratch"].index(r["model"]))
    out = write_result("inference.json", {"date": today, "images_timed": args.images,
                                          "score_threshold": args.score_threshold, "rows": results})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
