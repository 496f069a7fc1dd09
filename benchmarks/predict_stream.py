"""Peak memory of ``segtune predict`` over a folder as the number of images grows: it should not grow.

Writes as many small PNGs (random pixels, 160 x 120) as the largest of ``--counts`` into ``--workdir``,
then predicts on the first N of them for each N in ``--counts`` (default 100, 300, 1000), each in a fresh
process, with a small Mask R-CNN of random weights at score threshold 0 and at most 10 detections an
image (so every image has detections, masks and a picture to draw and write); prints seconds, images
per second and the process's peak resident memory per N.
Writes benchmarks/results/predict_stream.json.

    .venv/bin/python benchmarks/predict_stream.py [--counts 100 300 1000] [--workdir /tmp/segtune-stream]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import machine, write_result


def one_run(folder: str, count: int, out: str) -> dict[str, float]:
    import torch

    from segtune.engine import configure
    from segtune.models import build_from_config
    from segtune.predict import Predictor, predict_to_folder

    torch.manual_seed(0)
    cfg = configure(("benchmark", {"data.path": ".", "model.weights": "none", "model.weights_backbone": "none",
                                   "model.min_size": 96, "model.max_size": 128, "model.box_detections_per_img": 10}))
    model = build_from_config(cfg.model, num_classes=2, classes=["thing"], load_weights=False)
    model.roi_heads.score_thresh = 0.0
    predictor = Predictor(model, ["thing"], score_threshold=0.0)
    files = sorted(Path(folder).glob("*.png"))[:count]
    start = time.perf_counter()
    summary = predict_to_folder(predictor, [str(f) for f in files], out, overwrite=True)
    seconds = time.perf_counter() - start
    return {"images": len(summary.pictures), "detections": summary.num_detections, "seconds": round(seconds, 1),
            "images_per_s": round(len(summary.pictures) / seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--workdir", default="/tmp/segtune-stream")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one[0], int(args.one[1]), args.one[2])))
        return
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    images = work / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(max(args.counts)):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(images / f"{i:05d}.png")
    rows = []
    for count in args.counts:
        done = subprocess.run([sys.executable, __file__, "--one", str(images), str(count), str(work / f"out{count}")],
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['images']:5d} images: {row['seconds']:6.1f} s ({row['images_per_s']:.1f} images/s), "
              f"{row['detections']} detections, peak memory {row['peak_rss_mb']:.0f} MB")
    print(f"machine: {machine()}")
    print(f"wrote {write_result('predict_stream.json', {'rows': rows})}")


if __name__ == "__main__":
    main()
