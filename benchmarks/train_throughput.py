"""Training images/s of segtune's loop against a plain loop written the way the torchvision tutorial writes it.

One command:  .venv/bin/python benchmarks/train_throughput.py [--min-size 800] [--iters 3]

The tutorial configuration: Mask R-CNN R50-FPN (random initialisation: no weights are downloaded),
2 classes, resize to ``--min-size`` / 1333 px, batch 2, SGD lr 0.005, momentum 0.9, weight decay
5e-4, a linear warm-up. Both loops run in this one process on the same Penn-Fudan batches (no
augmentation, so the inputs are identical), from the same initial weights, each fed by its own
DataLoader (no workers) over the same pre-decoded images:

(a) the plain loop: images and targets to the device, ``loss_dict = model(images, targets)``, their
    sum, a finite-loss check, ``zero_grad``, ``backward``, ``step``, the warm-up schedule's step;
(b) segtune's loop: a :class:`segtune.engine.trainer.Trainer` set up from a config with these
    settings, whose own ``_train_epoch`` (loss logging, checks, ``_optimizer_step``, schedule) runs
    one iteration per call; evaluation and checkpoints are left out.

Each loop does one untimed warm-up iteration, then ``--iters`` timed ones, the two loops taking
turns (a b, b a, a b, ...) so machine drift falls on both alike. Prints a Markdown table (wall and
CPU seconds per iteration, images/s) and segtune's images/s over the plain loop's: from the totals,
the median of the per-iteration ratios (both loops see the same batch in an iteration) and from CPU
time; writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
from typing import Any

import torch

from common import DATA, write_result

from segtune.config import DataConfig, build_config
from segtune.data import build_dataset, collate
from segtune.engine.hooks import HookList
from segtune.engine.trainer import Trainer
from segtune.models import build_model

NAME = "train_throughput.json"
BATCH = 2
LR, MOMENTUM, WEIGHT_DECAY = 0.005, 0.9, 5e-4
#: The tutorial warms up over its first epoch: min(1000, len(loader) - 1) = 59 for 120 training images.
WARMUP_ITERS, WARMUP_FACTOR = 59, 0.001


class Cached(torch.utils.data.Dataset):
    """Decoded ``(image, target)`` items, so neither loop pays for JPEG decoding inside its timing."""

    def __init__(self, items: list[tuple[Any, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.items[i]


def loader_for(dataset: Cached, batch: int) -> torch.utils.data.DataLoader:
    """A loader yielding batch number ``batch`` (images ``2 * batch`` and ``2 * batch + 1``)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=[[BATCH * batch + k for k in range(BATCH)]],
                                       collate_fn=collate, num_workers=0)


class PlainLoop:
    """The tutorial's ``train_one_epoch``, written out by hand, one batch per call."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.warmup = torch.optim.lr_scheduler.LinearLR(self.optimizer, start_factor=WARMUP_FACTOR,
                                                        total_iters=WARMUP_ITERS)

    def run(self, loader: torch.utils.data.DataLoader) -> None:
        self.model.train()
        for images, targets in loader:
            images = [image.to(self.device) for image in images]
            targets = [{k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                       for t in targets]
            loss_dict = self.model(images, targets)
            losses = sum(loss for loss in loss_dict.values())
            loss_value = losses.item()
            if not math.isfinite(loss_value):
                raise RuntimeError(f"loss is {loss_value}")
            self.optimizer.zero_grad()
            losses.backward()
            self.optimizer.step()
            self.warmup.step()


class SegtuneLoop:
    """segtune's :class:`Trainer`, set up from a config, its epoch loop fed one chosen batch per call."""

    def __init__(self, data: str, min_size: int, out: str) -> None:
        cfg = build_config(("benchmark", {
            "data.path": data, "model.weights": "none", "model.weights_backbone": "none",
            "model.min_size": min_size, "model.max_size": round(min_size * 1333 / 800),
            "train.device": "cpu", "train.out": out, "train.epochs": 1, "train.batch_size": BATCH,
            "train.optimizer": "sgd", "train.lr": LR, "train.momentum": MOMENTUM, "train.weight_decay": WEIGHT_DECAY,
            "train.warmup_iters": WARMUP_ITERS, "train.warmup_factor": WARMUP_FACTOR, "train.augment": [],
            "train.tensorboard": False, "train.seed": 0, "train.max_iters_per_epoch": 1}))
        self.trainer = Trainer(cfg)
        self.trainer._setup()  # the data doctor, split, model (seeded), optimiser, schedule: as `segtune train`
        self.trainer.hooks = HookList([])
        self.trainer.iters = 1

    def run(self, loader: torch.utils.data.DataLoader) -> None:
        self.trainer.loader = loader
        self.trainer.start_iteration = 0
        if self.trainer._train_epoch(0) is None:
            raise RuntimeError("segtune's loop stopped early")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations of each loop (after 1 warm-up each)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device("cpu")

    ds = build_dataset(DataConfig(path=args.data), train=False)
    data = Cached([ds[i] for i in range(BATCH * (args.iters + 1))])
    with tempfile.TemporaryDirectory() as out:
        segtune_loop = SegtuneLoop(args.data, args.min_size, out)
        model = build_model("maskrcnn_resnet50_fpn", num_classes=2, weights="none", weights_backbone="none",
                            min_size=args.min_size, max_size=round(args.min_size * 1333 / 800))
        model.load_state_dict(segtune_loop.trainer.model.state_dict())  # the same initial weights
        trainable = {name: sum(p.numel() for p in m.parameters() if p.requires_grad)
                     for name, m in (("plain", model), ("segtune", segtune_loop.trainer.model))}
        layers = {name: [type(x).__name__ for x in m.modules()]
                  for name, m in (("plain", model), ("segtune", segtune_loop.trainer.model))}
        if trainable["plain"] != trainable["segtune"] or layers["plain"] != layers["segtune"]:
            raise SystemExit(f"the two models differ: trainable parameters {trainable}")
        plain_loop = PlainLoop(model.to(device), device)
        loops = {"plain": plain_loop, "segtune": segtune_loop}
        times: dict[str, list[float]] = {"plain": [], "segtune": []}
        cpu: dict[str, list[float]] = {"plain": [], "segtune": []}
        for i in range(args.iters + 1):
            order = ("plain", "segtune") if i % 2 == 0 else ("segtune", "plain")
            for name in order:
                loader = loader_for(data, i)
                start, start_cpu = time.perf_counter(), time.process_time()
                loops[name].run(loader)
                elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
                if i:  # iteration 0 warms up allocators and kernels
                    times[name].append(elapsed)
                    cpu[name].append(elapsed_cpu)
                print(f"{'warm-up' if i == 0 else f'iteration {i}'} {name}: {elapsed:.2f} s "
                      f"({elapsed_cpu:.2f} CPU s)", flush=True)

    rate = {name: BATCH * len(t) / sum(t) for name, t in times.items()}
    ratio = rate["segtune"] / rate["plain"]
    # Both loops see the same batch in the same iteration, and image sizes differ between batches, so
    # the per-iteration ratios are the fairest; CPU time is less disturbed by other processes.
    median_pairwise = statistics.median(p / s for p, s in zip(times["plain"], times["segtune"]))
    cpu_ratio = sum(cpu["plain"]) / sum(cpu["segtune"])
    result = {"device": str(device),
              "model": "maskrcnn_resnet50_fpn (random init)", "min_size": args.min_size,
              "max_size": round(args.min_size * 1333 / 800), "batch": BATCH, "iters": args.iters,
              "trainable_parameters": trainable["plain"],
              "s_per_iter": {name: t for name, t in times.items()},
              "cpu_s_per_iter": cpu, "images_per_s": rate, "segtune_over_plain": ratio,
              "segtune_over_plain_median_per_iteration": median_pairwise,
              "segtune_over_plain_cpu_time": cpu_ratio}
    OUT = write_result(NAME, result)
    print(f"\n| loop | s/iter (batch {BATCH}, {args.min_size} px) | CPU s/iter | images/s |")
    print("|---|---|---|---|")
    for name in ("plain", "segtune"):
        print(f"| {name} | {sum(times[name]) / len(times[name]):.2f} | {sum(cpu[name]) / len(cpu[name]):.2f} | "
              f"{rate[name]:.3f} |")
    print(f"\nsegtune / plain images/s: {ratio:.3f} (median per iteration {median_pairwise:.3f}, "
          f"by CPU time {cpu_ratio:.3f})")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
