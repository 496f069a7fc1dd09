"""Is the fast path (bf16 autocast + channels-last weights) as good as float32? The same training, both ways.

One command:  .venv/bin/python benchmarks/fast_path.py [--steps 300] [--data DIR] [--tag pennfudan]

Trains the ``cpu-scratch`` recipe (ResNet-18 FPN Mask R-CNN, 320 px, batch 4, AdamW, cosine over
``--steps``, LSJ + copy-paste) from random initialisation for ``--steps`` optimiser steps, several
ways, on the same split:

* ``fp32``: float32, contiguous weights (seed 0);
* ``fast``: bf16 autocast + channels-last weights (``--amp auto`` on a CPU with native bf16), seed 0:
  the same initial weights and the same batches as ``fp32`` (the batches come from one loader worker
  process seeded from the run's seed, so the model's own random draws cannot move them);
* ``bf16``: bf16 autocast with contiguous weights (the preset until the fast path), seed 0;
* ``fp32-seed1``: float32 again with another seed (other weights, other batches): the noise, what
  two equally good runs differ by;
* ``fast-seed1``: the fast path with that other seed, so each side has two seeds.

For each: the loss of every step, wall seconds per step (median), and bbox + segm AP on the test
split after the last step. Prints the loss curves' gap (mean absolute difference of the 25-step
running means) of each way against ``fp32``, beside the gap of ``fp32-seed1``, and the AP; writes
benchmarks/results/fast_path-TAG.json. A way is "within noise" when its loss gap is no larger than
the seed gap and its AP is within the seed run's AP difference (or 0.01, whichever is larger). With
``fast-seed1`` as well, the two seeds' mean AP of ``fast`` and ``fp32`` are compared too (the line
"two seeds each"). ``--add`` runs only the ways named by ``--ways`` and keeps the other rows of an
existing results file (a way takes one run of several minutes: they can be run one session at a time).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path
from typing import Any

from common import DATA, RESULTS, machine, parse_sets, write_result

from segtune.engine import configure
from segtune.engine.hooks import Hook
from segtune.engine.trainer import Trainer
from segtune.recipes import preset_layer
from segtune.machine import cpu_has_native_bf16

WAYS: dict[str, dict[str, Any]] = {
    "fp32": {"train.amp": "none", "train.memory_format": "contiguous", "train.seed": 0},
    "fast": {"train.amp": "bf16", "train.memory_format": "channels_last", "train.seed": 0},
    "bf16": {"train.amp": "bf16", "train.memory_format": "contiguous", "train.seed": 0},
    "fp32-seed1": {"train.amp": "none", "train.memory_format": "contiguous", "train.seed": 1},
    "fast-seed1": {"train.amp": "bf16", "train.memory_format": "channels_last", "train.seed": 1},
}
WINDOW = 25


class StepLog(Hook):
    """The loss and the wall time of every optimiser step."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.seconds: list[float] = []
        self._last = time.perf_counter()

    def after_step(self, trainer: Any, step: int, losses: dict[str, float]) -> None:
        now = time.perf_counter()
        self.losses.append(round(losses["loss"], 5))
        self.seconds.append(now - self._last)
        self._last = now


def running_mean(values: list[float], window: int = WINDOW) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]


def gap(a: list[float], b: list[float]) -> float:
    """Mean absolute difference of two loss curves' running means (over the steps both have)."""
    ra, rb = running_mean(a), running_mean(b)
    n = min(len(ra), len(rb))
    return round(statistics.fmean(abs(x - y) for x, y in zip(ra[:n], rb[:n])), 4)


def within_noise(row: dict[str, Any], base: dict[str, Any], seed: dict[str, Any], seed_gap: float) -> bool:
    """The loss gap no larger than the seed gap, each AP within the seed run's AP difference (or 0.01)."""
    if row["loss_gap_vs_fp32"] > seed_gap:
        return False
    for key in ("bbox_AP", "segm_AP"):
        if base[key] is None:
            continue
        allowed = max(abs(seed[key] - base[key]), 0.01)
        if abs(row[key] - base[key]) > allowed:
            return False
    return True


def two_seed_comparison(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean AP of ``fast`` and ``fast-seed1`` against ``fp32`` and ``fp32-seed1``, and the loss gap of
    the two fast runs' mean curve to the two fp32 runs' mean curve; None unless all four ran."""
    by = {r["way"]: r for r in rows}
    if not all(w in by for w in ("fp32", "fp32-seed1", "fast", "fast-seed1")):
        return None
    out: dict[str, Any] = {}
    for key in ("bbox_AP", "segm_AP"):
        if by["fp32"][key] is None:
            continue
        fp32 = statistics.fmean([by["fp32"][key], by["fp32-seed1"][key]])
        fast = statistics.fmean([by["fast"][key], by["fast-seed1"][key]])
        out[key] = {"fp32_mean": round(fp32, 4), "fast_mean": round(fast, 4), "difference": round(fast - fp32, 4),
                    "fp32_seed_spread": round(abs(by["fp32"][key] - by["fp32-seed1"][key]), 4),
                    "fast_seed_spread": round(abs(by["fast"][key] - by["fast-seed1"][key]), 4)}
    mean = lambda a, b: [(x + y) / 2 for x, y in zip(a, b)]  # noqa: E731
    out["mean_curve_gap"] = gap(mean(by["fast"]["losses"], by["fast-seed1"]["losses"]),
                                mean(by["fp32"]["losses"], by["fp32-seed1"]["losses"]))
    out["within_noise"] = all(abs(v["difference"]) <= max(v["fp32_seed_spread"], 0.01)
                              for k, v in out.items() if k.endswith("_AP"))
    return out


def train_one(way: str, steps: int, data: str, out: str, extra: dict[str, Any]) -> dict[str, Any]:
    preset = preset_layer("cpu-scratch")
    # One epoch of `steps` iterations: cpu-scratch's batch of 4 over the training images, repeated.
    values = {"data.path": data, "data.workers": 1, "train.out": out, "train.time_limit": None,
              "train.fit_to_time_limit": False, "train.epochs": 1, "train.repeat": 1000,
              "train.max_iters_per_epoch": steps, "train.tensorboard": False, "train.report": False,
              **WAYS[way], **extra}
    cfg = configure(preset, ("fast_path", values))
    log = StepLog()
    trainer = Trainer(cfg, hooks=[log])
    wall = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - wall
    metrics = result.last_metrics
    return {"way": way, "overrides": WAYS[way], "steps": trainer.step, "wall_s": round(wall, 1),
            "s_per_step_median": round(statistics.median(log.seconds[5:] or log.seconds), 3),
            "bbox_AP": round(float(metrics["bbox"]["AP"]), 4),
            "segm_AP": round(float(metrics["segm"]["AP"]), 4) if "segm" in metrics else None,
            "losses": log.losses, "run_dir": str(result.run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--tag", default="pennfudan", help="names the results file: fast_path-TAG.json")
    parser.add_argument("--ways", default="fp32,fast,bf16,fp32-seed1")
    parser.add_argument("--add", action="store_true",
                        help="keep the rows of an existing fast_path-TAG.json; run only --ways")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another setting for every way (e.g. data.format=coco)")
    args = parser.parse_args()
    if not cpu_has_native_bf16():
        print("note: this CPU has no native bfloat16 (AVX-512 BF16 or AMX): the bf16 ways run emulated, slowly")
    extra = parse_sets(args.set)
    rows: list[dict[str, Any]] = []
    result_file = RESULTS / f"fast_path-{args.tag}.json"
    ways = args.ways.split(",")
    if args.add and result_file.is_file():
        rows = [r for r in json.loads(result_file.read_text())["rows"] if r["way"] not in ways]
    for way in ways:
        print(f"\n## {way}", flush=True)
        rows.append(train_one(way, args.steps, args.data, f"runs/benchmarks/fast_path/{args.tag}", extra))
    base = next((r for r in rows if r["way"] == "fp32"), None)
    seed_gap = next((gap(r["losses"], base["losses"]) for r in rows if base and r["way"] == "fp32-seed1"), None)
    seed = next((r for r in rows if r["way"] == "fp32-seed1"), None)
    print(f"\n| way | s / step | speed-up | loss gap to fp32 (seed gap {seed_gap}) | bbox AP | segm AP | within noise |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if base is not None:
            r["speedup_vs_fp32"] = round(base["s_per_step_median"] / r["s_per_step_median"], 2)
            r["loss_gap_vs_fp32"] = gap(r["losses"], base["losses"])
            if seed is not None and r is not base and r is not seed:
                r["within_noise"] = within_noise(r, base, seed, seed_gap)
        print(f"| {r['way']} | {r['s_per_step_median']:.3f} | {r.get('speedup_vs_fp32', '–')} | "
              f"{r.get('loss_gap_vs_fp32', '–')} | {r['bbox_AP']:.3f} | {r['segm_AP'] or 0:.3f} | "
              f"{r.get('within_noise', '–')} |")
    pair = two_seed_comparison(rows)
    if pair:
        print(f"\ntwo seeds each: {pair}")
    out = write_result(f"fast_path-{args.tag}.json", {
        "date": datetime.date.today().isoformat(), "machine_line": machine(), "data": str(Path(args.data)),
        "steps": args.steps, "window": WINDOW, "seed_gap": seed_gap, "settings": extra, "rows": rows,
        **({"two_seeds": pair} if pair else {})})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
