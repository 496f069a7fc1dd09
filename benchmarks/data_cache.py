"""The decoded-image cache: the share of a training step spent waiting for data, without and with it.

One command:  .venv/bin/python benchmarks/data_cache.py [--images 72] [--epochs 3] [--iters 18]

Writes a data set of ``--images`` large photos (Penn-Fudan images and masks scaled up to 1920x1080
JPEGs, the case that made decoding a third of a step) into ``--workdir``, then trains the
``cpu-scratch`` recipe on it for ``--epochs`` epochs of ``--iters`` steps twice, ``--cache none`` and
``--cache ram``, from the same seed. Prints per mode the seconds per step and the share of the epoch
spent waiting for data, for the epochs after the first (the first fills the cache), and writes
benchmarks/results/data_cache.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

import numpy as np
from PIL import Image

from common import DATA, write_result
from segtune.engine import configure, train


def make_large_set(source: Path, out: Path, count: int, size: tuple[int, int] = (1920, 1080)) -> Path:
    """``count`` Penn-Fudan images with their masks scaled to ``size`` (JPEG images, PNG masks)."""
    if (out / "PNGImages").is_dir() and len(list((out / "PNGImages").glob("*.jpg"))) == count:
        return out
    shutil.rmtree(out, ignore_errors=True)
    (out / "PNGImages").mkdir(parents=True)
    (out / "PedMasks").mkdir(parents=True)
    images = sorted((source / "PNGImages").glob("*.png"))
    for k in range(count):
        src = images[k % len(images)]
        stem = f"{src.stem}_{k}"
        Image.open(src).convert("RGB").resize(size, Image.BILINEAR).save(out / "PNGImages" / f"{stem}.jpg", quality=92)
        mask = Image.open(source / "PedMasks" / f"{src.stem}_mask.png").resize(size, Image.NEAREST)
        Image.fromarray(np.asarray(mask)).save(out / "PedMasks" / f"{stem}_mask.png")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=72)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iters", type=int, default=18, help="steps per epoch (default 18: batch 4 x 18 = 72 images)")
    parser.add_argument("--workdir", default="/tmp/segtune-data-cache")
    parser.add_argument("--data", default=DATA)
    args = parser.parse_args()
    work = Path(args.workdir)
    data = make_large_set(Path(args.data), work / "data", args.images)
    rows = []
    for mode in ("none", "ram"):
        shutil.rmtree(work / f"run-{mode}", ignore_errors=True)
        cfg = configure(("benchmark", {"data.path": str(data), "train.preset": "cpu-scratch", "data.test_size": 4,
                                       "train.epochs": args.epochs, "train.max_iters_per_epoch": args.iters,
                                       "train.out": str(work / f"run-{mode}"),
                                       "train.tensorboard": False, "train.report": False, "train.val_loss": False,
                                       "data.cache": mode, "train.seed": 0}))
        result = train(cfg)
        later = [r["train"] for r in result.history[1:]] or [result.history[0]["train"]]
        row = {"cache": mode, "s_per_step": round(statistics.mean(r["s_per_iter"] for r in later), 3),
               "data_share": round(statistics.mean(r["data_share"] for r in later), 3),
               "first_epoch_s_per_step": round(result.history[0]["train"]["s_per_iter"], 3)}
        rows.append(row)
        print(row, flush=True)
    print("\n| cache | s / step (epochs 2+) | waiting for data | s / step, epoch 1 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['cache']} | {r['s_per_step']:.2f} | {100 * r['data_share']:.0f}% | {r['first_epoch_s_per_step']:.2f} |")
    out = write_result("data_cache.json", {"images": args.images, "size": "1920x1080 JPEG", "rows": rows})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
