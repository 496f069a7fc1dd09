"""Owns training-progress reporting: smoothed loss terms, timings, ETA, memory; bar or plain lines;
and the notes at the start of a run on what it could not use.

Modelled on the reporting of torchvision's reference ``engine.py`` (median over a window and the
global average of each term) but written for segtune: it also drives a tqdm bar on a terminal.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from segtune.config import Config
from segtune.data.decoded_cache import describe as describe_cache
from segtune.data.split import warn_if_small
from segtune.engine.run import SPLIT_FILE
from segtune.machine import format_seconds, is_terminal, peak_memory_mb
from segtune.threads import describe_threads

if TYPE_CHECKING:
    from segtune.engine.hooks import TrainerView

logger = logging.getLogger("segtune.train")


class Smoothed:
    """A running series: median of the last ``window`` values and the average of all of them."""

    def __init__(self, window: int = 20) -> None:
        self.recent: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float) -> None:
        self.recent.append(value)
        self.total += value
        self.count += 1

    @property
    def median(self) -> float:
        values = sorted(self.recent)
        return values[len(values) // 2] if values else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / max(1, self.count)


class EpochReporter:
    """Collects one epoch's losses and timings and reports them every ``print_freq`` iterations."""

    def __init__(self, epoch: int, total: int, *, device: torch.device, print_freq: int = 10, start: int = 0,
                 enabled: bool = True) -> None:
        """``start``: iterations already done (a resumed epoch); ``enabled=False`` collects silently
        (processes other than the first in distributed training)."""
        self.epoch, self.total, self.device, self.print_freq = epoch, total, device, print_freq
        self.first, self.enabled = start, enabled
        #: the iteration this epoch is expected to end at (a time budget may end it before ``total``)
        self.end = total
        #: training seconds left under a time limit (None: no limit); the ETA never exceeds it
        self.time_left: Callable[[], float] | None = None
        self.meters: dict[str, Smoothed] = {}
        self.iter_time, self.data_time = Smoothed(), Smoothed()
        self.start = self.last = time.perf_counter()
        self.bar = None
        if is_terminal() and enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)

    def data_ready(self) -> None:
        self.data_time.update(time.perf_counter() - self.last)

    def step(self, i: int, losses: dict[str, float], lr: float) -> None:
        now = time.perf_counter()
        self.iter_time.update(now - self.last)
        self.last = now
        for name, value in losses.items():
            self.meters.setdefault(name, Smoothed()).update(value)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.meters['loss'].median:.3f}", lr=f"{lr:.2e}",
                                 s_it=f"{self.iter_time.median:.2f}", refresh=False)
            self.bar.update(1)
        if self.enabled and (i % self.print_freq == 0 or i == self.total):
            self._line(i, lr)

    def _line(self, i: int, lr: float) -> None:
        eta = self.iter_time.global_avg * max(0, self.end - i)
        if self.time_left is not None:
            eta = min(eta, max(0.0, self.time_left()))
        terms = "  ".join(f"{k}: {m.median:.4f} ({m.global_avg:.4f})" for k, m in self.meters.items())
        logger.info(
            "Epoch: [%d]  [%*d/%d]  eta: %s  lr: %.6f  %s  time: %.4f  data: %.4f  max mem: %.0f MB",
            self.epoch, len(str(self.total)), i, self.total, format_seconds(eta), lr, terms,
            self.iter_time.median, self.data_time.median, peak_memory_mb(self.device),
        )

    def close(self) -> dict[str, float]:
        """End the epoch; return the average of each loss term plus the time taken."""
        if self.bar is not None:
            self.bar.close()
        elapsed = time.perf_counter() - self.start
        n = max(1, self.iter_time.count)
        data_share = self.data_time.total / elapsed if elapsed > 0 else 0.0
        if self.enabled:
            logger.info("Epoch: [%d] Total time: %s (%.4f s / it; %.0f%% of it waiting for data)", self.epoch,
                        format_seconds(elapsed), elapsed / n, 100 * data_share)
        out = {name: m.global_avg for name, m in self.meters.items()}
        out.update({"time_s": elapsed, "s_per_iter": elapsed / n, "iters": self.iter_time.count,
                    "data_share": data_share})
        return out


def log_setting_notes(cfg: Config, device: torch.device) -> None:
    """Say plainly what this run could not use (pretrained weights, a GPU) and what that means."""
    if cfg.model.weights in ("none", "None", "") and cfg.model.weights_backbone in ("none", "None", ""):
        if cfg.train.preset == "cpu-scratch":
            expect = ("the cpu-scratch recipe is made for this: on 2 CPU cores it reaches about 0.3 segm AP on "
                      "Penn-Fudan in 10 minutes and about 0.54 in an hour (docs/cpu-recipe.md)")
        else:
            expect = "a detector needs many epochs to learn from scratch: expect AP near 0 after a short run"
        logger.warning(
            "NOTE: training from random initialisation (no pretrained weights); %s. With COCO weights "
            "(--weights DEFAULT, needs network once or the file in the torch hub cache) the tutorial "
            "recipe reaches about 0.8 bbox AP on Penn-Fudan.", expect
        )
    if device.type == "cpu":
        logger.info("device: CPU, %s; no GPU in use", describe_threads())
    else:
        logger.info("device: %s (%s)", device, torch.cuda.get_device_name(device))


def log_run_start(trainer: TrainerView, resumed: str | None) -> None:
    """The lines a run starts its log with: folder, resume point, data, settings, split, schedule."""
    cfg = trainer.cfg
    logger.info("run folder: %s", trainer.run_dir)
    if resumed:
        logger.info("resuming from %s at epoch %d, iteration %d (step %d)", resumed, trainer.epoch,
                    trainer.start_iteration, trainer.step)
    data = trainer.data
    logger.info("data: %s (%s format): %d images, %d instances, classes %s", data.full.root, data.full.format,
                data.report.images, data.report.instances, trainer.run.classes)
    if data.val is not None:
        logger.info("validation data: %s (%s format): %d images, %d instances", data.val.root,
                    data.val.format, data.val_report.images, data.val_report.instances)
    log_setting_notes(cfg, trainer.device)
    logger.info(describe_cache(trainer.train_ds.decoded_cache, cfg.data.cache))
    if trainer.dist.world_size > 1:
        logger.info("distributed: %d processes (%s)", trainer.dist.world_size, trainer.dist.backend)
    source = trainer.split.get("source") or f"random, seed {cfg.data.split_seed}"  # older runs say nothing
    logger.info("split: %d train / %d test images: %s; saved in %s", len(trainer.train_ds), len(trainer.test_ds),
                source, trainer.run_dir / SPLIT_FILE)
    if not resumed:
        warn_if_small(trainer.split, data.test_instance_counts)
    logger.info("schedule: %d epochs x %d iterations, batch %d%s%s", trainer.run.epochs, trainer.iters,
                cfg.train.batch_size, f" x {trainer.dist.world_size} processes" if trainer.dist.world_size > 1 else "",
                " (an upper bound: fitted to the time limit after the first steps)"
                if cfg.train.fit_to_time_limit and cfg.train.time_limit and not resumed else "")
