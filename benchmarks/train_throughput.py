"""Training images/s of segtune's loop against a plain loop written the way the torchvision tutorial writes it.

One command:  .venv/bin/python benchmarks/train_throughput.py [--recipe tutorial|cpu-scratch] [--iters 3]
                  [--min-size 800] [--amp auto|none|bf16] [--memory-format auto|contiguous|channels_last]

``--recipe tutorial`` (default), the tutorial configuration: Mask R-CNN R50-FPN (random
initialisation: no weights are downloaded), 2 classes, resize to ``--min-size`` / 1333 px, batch 2,
SGD lr 0.005, momentum 0.9, weight decay 5e-4, a linear warm-up. ``--recipe cpu-scratch``: that
preset's model (ResNet-18 FPN Mask R-CNN, 320 px), batch size and optimiser (AdamW). Both loops run
in this one process on the same Penn-Fudan batches (no augmentation, so the inputs are identical),
from the same initial weights, each fed by its own DataLoader (no workers) over the same
pre-decoded images:

(a) the plain loop: images and targets to the device, ``loss_dict = model(images, targets)``, their
    sum, a finite-loss check, ``zero_grad``, ``backward``, ``step``, the warm-up schedule's step, in
    float32 with contiguous weights, as the tutorial writes it;
(b) segtune's loop: a :class:`segtune.engine.trainer.Trainer` set up from a config with these
    settings and segtune's own default number formats (``train.amp``, ``train.memory_format``; on
    a CPU with native bf16 that is the fast path: bf16 autocast, channels-last weights; ``--amp``
    and ``--memory-format`` override them), whose own ``_train_epoch`` (loss logging, checks,
    ``_optimizer_step``, schedule) runs one iteration per call; evaluation and checkpoints are left out.

Loss parity beside the speed: each loop's loss on every iteration (the warm-up included: there
both start from the same weights on the same batch, with torch's generator seeded alike for the
RoI sampling), and their relative difference.

Each loop does one untimed warm-up iteration, then ``--iters`` timed ones, the two loops taking
turns (a b, b a, a b, ...) so machine drift falls on both alike. Prints a Markdown table (wall and
CPU seconds per iteration, images/s) and segtune's images/s over the plain loop's: from the totals,
the median of the per-iteration ratios (both loops see the same batch in an iteration) and from CPU
time; writes benchmarks/results/train_throughput.json (``--recipe cpu-scratch``:
train_throughput-cpu-scratch.json; ``--tag T``: train_throughput-T.json, so a variant such as
``--amp none`` keeps the default's file).
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
from segtune.engine.parts import build_parts
from segtune.engine.trainer import Trainer
from segtune.models import build_from_config
from segtune.recipes import preset_layer

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


def loader_for(dataset: Cached, index: int, size: int) -> torch.utils.data.DataLoader:
    """A loader yielding batch number ``index`` of ``size`` images."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=[[size * index + k for k in range(size)]],
                                       collate_fn=collate, num_workers=0)


class PlainLoop:
    """The tutorial's ``train_one_epoch``, written out by hand, one batch per call."""

    def __init__(self, model: torch.nn.Module, device: torch.device, train: Any) -> None:
        self.model, self.device = model, device
        self.losses: list[float] = []
        params = [p for p in model.parameters() if p.requires_grad]
        if train.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=train.lr,
                                                                      weight_decay=train.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=train.lr, momentum=train.momentum,
                                             weight_decay=train.weight_decay)
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
            self.losses.append(loss_value)
            self.optimizer.zero_grad()
            losses.backward()
            self.optimizer.step()
            self.warmup.step()


class SegtuneLoop:
    """segtune's :class:`Trainer`, set up from a config, its epoch loop fed one chosen batch per call."""

    def __init__(self, data: str, recipe: str, out: str, overrides: dict[str, Any]) -> None:
        cfg = build_config(*recipe_layers(recipe), ("benchmark", {
            "data.path": data, "train.device": "cpu", "train.out": out, "train.epochs": 1,
            "train.warmup_iters": WARMUP_ITERS, "train.warmup_factor": WARMUP_FACTOR, "train.augment": [],
            "train.schedule": "step", "train.clip_grad_norm": None, "train.tensorboard": False,
            "train.report": False, "train.seed": 0, "train.max_iters_per_epoch": 1, "data.cache": "none",
            "train.time_limit": None, "train.fit_to_time_limit": False,
            **overrides}))
        self.cfg = cfg
        self.losses: list[float] = []
        # The data doctor, split, model (seeded), optimiser, schedule: built as `segtune train` builds them.
        self.trainer = Trainer.from_parts(build_parts(cfg))
        self.trainer.hooks = HookList([])
        self.trainer.iters = 1

    def run(self, loader: torch.utils.data.DataLoader) -> None:
        self.trainer.loader = loader
        self.trainer.start_iteration = 0
        if self.trainer._train_epoch(0) is None:
            raise RuntimeError("segtune's loop stopped early")
        self.losses.append(self.trainer._last_losses["loss"])


def recipe_layers(recipe: str) -> list[tuple[str, dict[str, Any]]]:
    """The config layers of ``--recipe``: the tutorial's settings without downloads, or a preset."""
    if recipe == "tutorial":
        return [("tutorial", {"model.weights": "none", "model.weights_backbone": "none", "train.batch_size": BATCH,
                              "train.optimizer": "sgd", "train.lr": LR, "train.momentum": MOMENTUM,
                              "train.weight_decay": WEIGHT_DECAY})]
    return [preset_layer(recipe)]


def relative_difference(a: list[float], b: list[float]) -> list[float]:
    return [abs(x - y) / abs(y) for x, y in zip(a, b)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--recipe", default="tutorial", choices=["tutorial", "cpu-scratch"])
    parser.add_argument("--min-size", type=int, default=None, help="input size (default: the recipe's; tutorial 800)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations of each loop (after 1 warm-up each)")
    parser.add_argument("--amp", default=None, help="segtune's train.amp (default: segtune's default)")
    parser.add_argument("--memory-format", default=None, help="segtune's train.memory_format (default: its default)")
    parser.add_argument("--tag", help="names the results file train_throughput-TAG.json (default: by the recipe)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("segtune.train").setLevel(logging.INFO)  # the "number formats" line
    device = torch.device("cpu")
    overrides: dict[str, Any] = {}
    if args.min_size is not None:
        overrides.update({"model.min_size": args.min_size, "model.max_size": round(args.min_size * 1333 / 800)})
    if args.amp is not None:
        overrides["train.amp"] = args.amp
    if args.memory_format is not None:
        overrides["train.memory_format"] = args.memory_format

    with tempfile.TemporaryDirectory() as out:
        segtune_loop = SegtuneLoop(args.data, args.recipe, out, overrides)
        cfg = segtune_loop.cfg
        batch = cfg.train.batch_size
        ds = build_dataset(DataConfig(path=args.data), train=False)
        data = Cached([ds[i] for i in range(batch * (args.iters + 1))])
        model = build_from_config(cfg.model, num_classes=2, load_weights=False)
        model.load_state_dict(segtune_loop.trainer.model.state_dict())  # the same initial weights
        trainable = {name: sum(p.numel() for p in m.parameters() if p.requires_grad)
                     for name, m in (("plain", model), ("segtune", segtune_loop.trainer.model))}
        layers = {name: [type(x).__name__ for x in m.modules()]
                  for name, m in (("plain", model), ("segtune", segtune_loop.trainer.model))}
        if trainable["plain"] != trainable["segtune"] or layers["plain"] != layers["segtune"]:
            raise SystemExit(f"the two models differ: trainable parameters {trainable}")
        plain_loop = PlainLoop(model.to(device), device, cfg.train)
        loops = {"plain": plain_loop, "segtune": segtune_loop}
        times: dict[str, list[float]] = {"plain": [], "segtune": []}
        cpu: dict[str, list[float]] = {"plain": [], "segtune": []}
        for i in range(args.iters + 1):
            order = ("plain", "segtune") if i % 2 == 0 else ("segtune", "plain")
            for name in order:
                loader = loader_for(data, i, batch)
                # The same random draws for both loops in an iteration (the RoI heads sample their RoIs
                # with torch's generator), so their losses differ by the number formats alone.
                torch.manual_seed(1000 + i)
                start, start_cpu = time.perf_counter(), time.process_time()
                loops[name].run(loader)
                elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
                if i:  # iteration 0 warms up allocators and kernels
                    times[name].append(elapsed)
                    cpu[name].append(elapsed_cpu)
                print(f"{'warm-up' if i == 0 else f'iteration {i}'} {name}: {elapsed:.2f} s "
                      f"({elapsed_cpu:.2f} CPU s)", flush=True)

    rate = {name: batch * len(t) / sum(t) for name, t in times.items()}
    ratio = rate["segtune"] / rate["plain"]
    # Both loops see the same batch in the same iteration, and image sizes differ between batches, so
    # the per-iteration ratios are the fairest; CPU time is less disturbed by other processes.
    median_pairwise = statistics.median(p / s for p, s in zip(times["plain"], times["segtune"]))
    cpu_ratio = sum(cpu["plain"]) / sum(cpu["segtune"])
    losses = {"plain": plain_loop.losses, "segtune": segtune_loop.losses}
    rel = relative_difference(losses["segtune"], losses["plain"])
    formats = {"amp": segtune_loop.trainer.autocast_dtype is not None and str(segtune_loop.trainer.autocast_dtype),
               "channels_last": next(p for p in segtune_loop.trainer.model.parameters() if p.dim() == 4)
               .is_contiguous(memory_format=torch.channels_last)}
    result = {"device": str(device), "recipe": args.recipe,
              "model": f"{cfg.model.name} {cfg.model.backbone or ''} (random init)".replace("  ", " "),
              "min_size": cfg.model.min_size, "max_size": cfg.model.max_size, "batch": batch, "iters": args.iters,
              "segtune_settings": {"train.amp": cfg.train.amp, "train.memory_format": cfg.train.memory_format,
                                   **formats},
              "losses": losses, "loss_relative_difference": rel,
              "loss_relative_difference_first": rel[0] if rel else None,
              "loss_relative_difference_median": statistics.median(rel) if rel else None,
              "trainable_parameters": trainable["plain"],
              "s_per_iter": {name: t for name, t in times.items()},
              "cpu_s_per_iter": cpu, "images_per_s": rate, "segtune_over_plain": ratio,
              "segtune_over_plain_median_per_iteration": median_pairwise,
              "segtune_over_plain_cpu_time": cpu_ratio}
    tag = args.tag or (None if args.recipe == "tutorial" else args.recipe)
    OUT = write_result(f"train_throughput-{tag}.json" if tag else NAME, result)
    print(f"\nsegtune's number formats: {result['segtune_settings']}")
    print(f"\n| loop | s/iter (batch {batch}, {cfg.model.min_size} px) | CPU s/iter | images/s |")
    print("|---|---|---|---|")
    for name in ("plain", "segtune"):
        print(f"| {name} | {sum(times[name]) / len(times[name]):.2f} | {sum(cpu[name]) / len(cpu[name]):.2f} | "
              f"{rate[name]:.3f} |")
    print(f"\nsegtune / plain images/s: {ratio:.3f} (median per iteration {median_pairwise:.3f}, "
          f"by CPU time {cpu_ratio:.3f})")
    print("loss, plain / segtune per iteration (warm-up first): "
          + ", ".join(f"{p:.3f}/{q:.3f}" for p, q in zip(losses["plain"], losses["segtune"]))
          + f"; relative difference on the warm-up (same weights, same batch) {rel[0]:.4f}, "
          f"median {statistics.median(rel):.4f}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
