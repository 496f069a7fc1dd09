"""Owns the training loop: data checks, split, model, SGD + schedule, evaluation every epoch, checkpoints."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segtune.checkpoint import save_checkpoint
from segtune.config import Config, dump_yaml, resolve_data_path
from segtune.data import (build_collate, build_dataset, build_loader, check_dataset, make_split, open_dataset,
                          raise_on_errors, save_split)
from segtune.engine.logger import EpochReporter
from segtune.engine.optim import build_optimizer, build_scheduler
from segtune.engine.run import CONFIG_FILE, SPLIT_FILE, attach_log_file, detach_log_file, new_run_dir, write_metrics
from segtune.errors import ConfigError, TrainingError
from segtune.evaluation import dataset_ground_truth, evaluate_model
from segtune.fileio import write_text
from segtune.models import build_from_config
from segtune.runtime import default_workers, resolve_device, seed_everything

logger = logging.getLogger("segtune.train")


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the best and last evaluation, every epoch's record."""

    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, dict[str, float]]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_metrics(self) -> dict[str, dict[str, float]]:
        return self.history[-1]["metrics"] if self.history else {}


def _primary(metrics: dict[str, dict[str, float]]) -> float:
    return metrics.get("segm", metrics.get("bbox", {})).get("AP", -1.0)


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, loader: Any, *, epoch: int,
    iters: int, step: int, device: torch.device, print_freq: int, clip_grad_norm: float | None = None,
) -> tuple[dict[str, float], int]:
    """One epoch of at most ``iters`` iterations; returns the average loss terms and the new step count."""
    model.train()
    report = EpochReporter(epoch, iters, device=device, print_freq=print_freq)
    for i, (images, targets) in enumerate(loader, 1):
        report.data_ready()
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        if not math.isfinite(float(loss.detach())):
            report.close()
            terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise TrainingError(
                f"loss is {float(loss.detach())} at epoch {epoch}, iteration {i} (step {step + 1}): {terms}; "
                f"try a lower --lr or --clip-grad-norm"
            )
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses, before the schedule moves on
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        report.step(i, {"loss": float(loss.detach()), **values}, lr)
        if i >= iters:
            break
    return report.close(), step


def _log_setting_notes(cfg: Config, device: torch.device) -> None:
    """Say plainly what this run could not use (pretrained weights, a GPU) and what that means."""
    if cfg.model.weights in ("none", "None", ""):
        logger.warning(
            "NOTE: training from random initialisation (no pretrained weights). Mask R-CNN needs many "
            "epochs to learn from scratch: expect AP near 0 after a short run. With COCO weights "
            "(--weights DEFAULT, needs network once or the file in the torch hub cache) the tutorial "
            "recipe reaches about 0.8 bbox AP on Penn-Fudan."
        )
    if device.type == "cpu":
        logger.info("device: CPU (%d threads); no GPU in use", torch.get_num_threads())
    else:
        logger.info("device: %s (%s)", device, torch.cuda.get_device_name(device))


def train(cfg: Config) -> TrainResult:
    """Train, evaluate after every epoch and checkpoint, as ``cfg`` says; return the results.

    Nothing is written until the data has been read in full and the model built, so bad data or
    missing weights leave no run folder behind.

    Raises:
        DatasetError, WeightsError, ConfigError: bad input, before anything is written.
        TrainingError: the loss became non-finite (``weights/last.pt`` of the last epoch is kept).
    """
    device = resolve_device(cfg.train.device)
    cfg.data.path = resolve_data_path(cfg.data.path)
    report = check_dataset(cfg.data)  # the data doctor: every image and annotation, before anything is written
    raise_on_errors(report)
    for problem in report.warnings[:10]:
        logger.warning("%s", problem)
    if len(report.warnings) > 10:
        logger.warning("... and %d more warnings (segtune data check %s lists them all)",
                       len(report.warnings) - 10, cfg.data.path)
    full = open_dataset(cfg.data)
    cfg.data.classes = list(full.classes)  # formats with their own class list win; config.yaml records it
    if not full.has_masks and cfg.model.name.startswith("maskrcnn"):
        raise ConfigError(f"{full.root}: the data set has boxes only, but {cfg.model.name} needs instance masks")
    split = make_split(full.all_files, cfg.data.test_size, cfg.data.split_seed)

    seed_everything(cfg.train.seed)
    num_classes = len(cfg.data.classes) + 1
    model = build_from_config(cfg.model, num_classes=num_classes).to(device)
    train_ds = build_dataset(cfg.data, files=split["train"], train=True, augment=cfg.train.augment,
                             hflip_prob=cfg.train.hflip_prob)
    test_ds = build_dataset(cfg.data, files=split["test"], train=False)
    workers = default_workers(device, cfg.data.workers)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    loader = build_loader(train_ds, batch_size=cfg.train.batch_size, train=True, workers=workers, generator=generator,
                          aspect_ratio_group_factor=cfg.data.aspect_ratio_group_factor,
                          collate_fn=build_collate(cfg.train.augment, seed=cfg.train.seed))
    iters = len(loader) if cfg.train.max_iters_per_epoch is None else min(len(loader), cfg.train.max_iters_per_epoch)
    optimizer = build_optimizer(model, lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay)
    scheduler = build_scheduler(
        optimizer, iters_per_epoch=iters, warmup_iters=cfg.train.warmup_iters, warmup_factor=cfg.train.warmup_factor,
        lr_step=cfg.train.lr_step, lr_gamma=cfg.train.lr_gamma,
    )

    run_dir = new_run_dir(cfg.train.out)
    handler = attach_log_file(run_dir)
    try:
        write_text(run_dir / CONFIG_FILE, dump_yaml(cfg))
        save_split(run_dir / SPLIT_FILE, split)
        logger.info("run folder: %s", run_dir)
        logger.info("data: %s (%s format): %d images, %d instances, classes %s", full.root, full.format,
                    report.images, report.instances, cfg.data.classes)
        _log_setting_notes(cfg, device)
        logger.info("split: %d train / %d test images (seed %d, saved in %s)",
                    len(train_ds), len(test_ds), cfg.data.split_seed, run_dir / SPLIT_FILE)
        logger.info("schedule: %d epochs x %d iterations, batch %d", cfg.train.epochs, iters, cfg.train.batch_size)
        gt = dataset_ground_truth(test_ds, cfg.data.classes)
        history: list[dict[str, Any]] = []
        best_score, best_epoch, best_metrics = -math.inf, -1, {}
        step = 0
        for epoch in range(cfg.train.epochs):
            lr = optimizer.param_groups[0]["lr"]
            try:
                losses, step = train_one_epoch(
                    model, optimizer, scheduler, loader, epoch=epoch, iters=iters, step=step, device=device,
                    print_freq=cfg.train.print_freq, clip_grad_norm=cfg.train.clip_grad_norm,
                )
            except TrainingError as e:
                kept = (f"{run_dir / 'weights' / 'last.pt'} (epoch {epoch - 1}) is kept" if epoch
                        else "no epoch finished, so no checkpoint was written")
                raise TrainingError(f"{e}; {kept}") from None
            start = time.perf_counter()
            report = evaluate_model(model, test_ds, cfg.data.classes, device=device, batch_size=cfg.eval.batch_size,
                                    workers=workers, mask_threshold=cfg.eval.mask_threshold, gt=gt)
            record = {"epoch": epoch, "step": step, "lr": lr, "train": losses, "metrics": report.metrics,
                      "eval_time_s": time.perf_counter() - start, "detections": report.num_detections}
            history.append(record)
            write_metrics(run_dir, history)
            state = {
                "model": model.state_dict(), "epoch": epoch + 1, "step": step, "classes": list(cfg.data.classes),
                "category_ids": list(full.category_ids), "config": cfg.to_dict(), "split": split, "metrics": report.metrics,
            }
            # last.pt also holds the optimiser and schedule (to go on training); best.pt is for use.
            save_checkpoint(run_dir / "weights" / "last.pt",
                            {**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
            score = _primary(report.metrics)
            if score > best_score:
                best_score, best_epoch, best_metrics = score, epoch, report.metrics
                save_checkpoint(run_dir / "weights" / "best.pt", state)
            logger.info("epoch %d: bbox AP %.4f%s  (best epoch %d)", epoch, report.metrics["bbox"]["AP"],
                        f"  segm AP {report.metrics['segm']['AP']:.4f}" if "segm" in report.metrics else "", best_epoch)
        return TrainResult(run_dir=run_dir, best_epoch=best_epoch, best_metrics=best_metrics, history=history)
    finally:
        detach_log_file(handler)
