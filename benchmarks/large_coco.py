"""Time to the first training step, and peak memory, on a COCO file of 100,000 images.

Writes a few small real images and a COCO instances JSON of ``--images`` entries (each its own file
name, a hard link to one of the real images) with one polygon each into ``--workdir``, then trains on it
with segtune's trainer until the first optimiser step, in a fresh process each time: once with the
data check run in full, once with it found in the check cache. Prints, per run, the seconds from the
start to the set-up's end (data opened and checked, model built) and to the first step, and the peak
resident memory. Goal (issue "data as people really have it"): under 60 s and under 4 GB.
Writes benchmarks/results/large_coco.json.

    .venv/bin/python benchmarks/large_coco.py [--images 100000] [--workdir /tmp/segtune-large-coco]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import write_result

SIDE = 48  # pixels; small images keep the figure about segtune's per-image work, not decoding


def write_data(root: Path, n: int, real: int = 8) -> Path:
    """``root/images/`` with ``n`` names (hard links to ``real`` images) and ``root/instances.json``."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sources = []
    for k in range(real):
        pixels = rng.integers(0, 80, (SIDE, SIDE, 3), dtype=np.uint8)
        pixels[8:30, 10:40] = (220, 60 + 20 * k, 40)
        path = root / f"real{k}.png"
        Image.fromarray(pixels).save(path)
        sources.append(path)
    images, annotations = [], []
    for i in range(n):
        name = f"{i:06d}.png"
        target = images_dir / name
        if not target.exists():
            os.link(sources[i % real], target)
        images.append({"id": i + 1, "file_name": name, "height": SIDE, "width": SIDE})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": 660.0,
                            "bbox": [10, 8, 30, 22], "segmentation": [[10, 8, 40, 8, 40, 30, 10, 30]]})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


def one_run(data: str, out: str) -> dict[str, float]:
    """Train until the first optimiser step (in this process); the seconds to each point and the peak RSS."""
    import logging

    import segtune
    from segtune.engine.hooks import CallbackHook

    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    marks: dict[str, float] = {}

    def first_step(trainer, step, losses):
        marks["first_step_s"] = time.perf_counter() - start
        trainer.stop_training = True

    hooks = [CallbackHook({"before_train": lambda t: marks.setdefault("set_up_s", time.perf_counter() - start),
                           "after_step": first_step})]
    cfg = segtune.configure(("benchmark", {
        "data.path": data, "train.out": out, "train.device": "cpu", "train.epochs": 1, "train.tensorboard": False,
        "train.val_loss": False, "model.weights": "none", "model.weights_backbone": "none", "model.min_size": 64,
        "model.max_size": 96, "model.rpn_pre_nms_top_n_train": 100, "model.rpn_post_nms_top_n_train": 50,
        "model.box_batch_size_per_image": 32}))
    segtune.train(cfg, hooks)
    marks["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--workdir", default="/tmp/segtune-large-coco")
    parser.add_argument("--one", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(*args.one)))
        return
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    t = time.perf_counter()
    data = write_data(work / "data", args.images)
    print(f"wrote {args.images} image entries in {time.perf_counter() - t:.1f} s ({data})")
    env = {k: v for k, v in os.environ.items() if k != "SEGTUNE_CACHE_DIR"}  # the check is kept beside the data
    runs = []
    for label in ("checked in full", "check cached"):
        done = subprocess.run([sys.executable, __file__, "--one", str(data), str(work / "runs" / "r")], env=env,
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        marks = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{label:16s}: set-up {marks['set_up_s']:.1f} s, first step at {marks['first_step_s']:.1f} s, "
              f"peak memory {marks['peak_rss_gb']:.2f} GB")
        runs.append({"check": label, **{k: round(v, 2) for k, v in marks.items()}})
    print(f"machine: {os.cpu_count()} CPUs; goal: first step under 60 s, memory under 4 GB")
    out = write_result("large_coco.json", {"images": args.images, "side_px": SIDE,
                                           "goal": {"first_step_s": 60, "peak_rss_gb": 4}, "runs": runs})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
