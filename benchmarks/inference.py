"""CPU inference: per-image latency and images/s of the tutorial model and of segtune's fastest path, with their AP.

One command:  .venv/bin/python benchmarks/inference.py [--tutorial CKPT] [--fast CKPT] [--images 20]

Models (segtune checkpoints; by default the newest ``best.pt`` of each recipe that
``benchmarks/time_to_accuracy.py --tag final...`` trained, so the AP is that of an hour's training
from scratch):

* ``tutorial``: Mask R-CNN R50-FPN at 800 px (the tutorial's model). Without a checkpoint it runs
  with random weights: its speed is real, its AP is marked untrained.
* ``cpu-scratch``: the ``cpu-scratch`` preset's Mask R-CNN (ResNet-18 FPN, GroupNorm, 320 px).

Paths: ``fp32`` (eager PyTorch, ``torch.inference_mode``) and ``bf16`` (the same under CPU autocast
to bfloat16, which pays off on CPUs with AVX-512 BF16 or AMX). For each model and path: the median
and mean latency of one image (batch 1, after two warm-up images) over ``--images`` test images,
images/s, and COCO bbox + segm AP on the whole test split computed from that same path, so a faster
path that loses accuracy shows it. Writes benchmarks/results/inference.json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from common import DATA, write_result
from segtune.checkpoint import load_checkpoint
from segtune.config import DataConfig
from segtune.data import build_dataset, make_split, open_dataset
from segtune.evaluation import dataset_ground_truth, evaluate_model
from segtune.models import build_model, model_from_checkpoint

RUNS = Path("runs/benchmarks/time_to_accuracy")


def newest_checkpoint(model_name: str) -> Path | None:
    """The newest ``best.pt`` of the time-to-accuracy runs tagged ``final*`` whose model is ``model_name``."""
    found = []
    for path in RUNS.glob("final*/**/weights/best.pt"):
        config = path.parent.parent / "config.yaml"
        if config.is_file() and f"name: {model_name}\n" in config.read_text():
            found.append(path)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def load(kind: str, path: str | None) -> tuple[torch.nn.Module, str, list[str] | None]:
    """``(model, source, test files)`` for ``kind``; random tutorial weights when no checkpoint is found."""
    name = "maskrcnn_resnet50_fpn" if kind == "tutorial" else "maskrcnn"
    ckpt_path = Path(path) if path else newest_checkpoint(name)
    if ckpt_path is None:
        if kind != "tutorial":
            raise SystemExit("no cpu-scratch checkpoint: pass --fast CKPT or run benchmarks/time_to_accuracy.py first")
        model = build_model(name, num_classes=2, weights="none", weights_backbone="none")
        return model.eval(), "untrained (random weights)", None
    ckpt = load_checkpoint(ckpt_path)
    model, _ = model_from_checkpoint(ckpt)
    return model.eval(), str(ckpt_path), ckpt["split"]["test"]


def autocast(path: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if path == "bf16" else contextlib.nullcontext()


def latency(model: torch.nn.Module, images: list[torch.Tensor], path: str) -> list[float]:
    times = []
    with torch.inference_mode(), autocast(path):
        for i, image in enumerate(images):
            start = time.perf_counter()
            model([image])
            if i >= 2:  # the first two warm up allocators and kernels
                times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tutorial", help="segtune checkpoint of the tutorial model (default: newest benchmark run)")
    parser.add_argument("--fast", help="segtune checkpoint of the cpu-scratch model (default: newest benchmark run)")
    parser.add_argument("--images", type=int, default=20, help="test images timed per model and path (default 20)")
    parser.add_argument("--paths", default="fp32,bf16")
    parser.add_argument("--data", default=DATA)
    args = parser.parse_args()
    data_cfg = DataConfig(path=args.data)
    full = open_dataset(data_cfg)
    rows: list[dict[str, Any]] = []
    for kind, ckpt in (("tutorial", args.tutorial), ("cpu-scratch", args.fast)):
        model, source, files = load(kind, ckpt)
        if files is None:
            files = make_split(full.all_files, data_cfg.test_size, data_cfg.split_seed)["test"]
        test = build_dataset(data_cfg, files=files, train=False)
        gt = dataset_ground_truth(test, list(full.classes))
        images = [test[i][0] for i in range(min(len(test), args.images + 2))]
        for path in args.paths.split(","):
            times = latency(model, images, path)
            with autocast(path):
                report = evaluate_model(model, test, list(full.classes), device=torch.device("cpu"), gt=gt)
            row = {"model": kind, "path": path, "checkpoint": source, "size": list(model.transform.min_size),
                   "median_ms": round(1000 * statistics.median(times), 1),
                   "mean_ms": round(1000 * statistics.mean(times), 1), "images_per_s": round(len(times) / sum(times), 2),
                   "bbox_AP": round(report.metrics["bbox"]["AP"], 4), "segm_AP": round(report.metrics["segm"]["AP"], 4),
                   "timed_images": len(times), "test_images": len(test)}
            rows.append(row)
            print(row, flush=True)
    base = next(r for r in rows if r["model"] == "tutorial" and r["path"] == "fp32")
    print("\n| model | path | checkpoint | ms / image (median) | images/s | speed-up | bbox AP | segm AP |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["speedup_vs_tutorial_fp32"] = round(r["images_per_s"] / base["images_per_s"], 2)
        trained = "untrained" if r["checkpoint"].startswith("untrained") else "trained"
        print(f"| {r['model']} | {r['path']} | {trained} | {r['median_ms']:.0f} | {r['images_per_s']:.2f} | "
              f"{r['speedup_vs_tutorial_fp32']:.1f}x | {r['bbox_AP']:.3f} | {r['segm_AP']:.3f} |")
    out = write_result("inference.json", {"threads": torch.get_num_threads(), "rows": rows})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
