"""Owns the training loop: set-up from a config, epochs of steps, resume and stops; everything else is a hook.

The loop does the steps: mixed precision, accumulation, clipping, DistributedDataParallel, and fires
the hooks. Evaluation, checkpoints, the time budget, EMA, the metrics files, the plot, TensorBoard,
early stopping and the validation loss are hooks (``segtune.engine.default_hooks``), as are the user's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segtune.checkpoint import RunState, keypoint_info, run_state_of
from segtune.config import Config, dump_yaml, resolve_data_path
from segtune.data import DetectionDataset, build_collate, prepare, save_split
from segtune.data.build import build_loader, build_loader_from_batches
from segtune.data.decoded_cache import make_cache
from segtune.engine import distributed as dist
from segtune.engine.adapt import adapt_to_data
from segtune.engine.amp import setup_amp
from segtune.engine.budget import Stopwatch
from segtune.engine.checkpoints import best_index
from segtune.engine.default_hooks import build_hooks
from segtune.engine.hooks import Hook, HookList
from segtune.engine.logger import EpochReporter, log_run_start
from segtune.engine.optim import build_optimizer, build_scheduler, scaled_lr
from segtune.engine.run_data import open_run_data
from segtune.engine.run import (CONFIG_FILE, SPLIT_FILE, TrainResult, attach_log_file, detach_log_file,
                                hold_setup_lines, new_run_dir, release_setup_lines, write_run_state)
from segtune.engine.signals import StopSignals
from segtune.engine.state import find_resume_checkpoint, hook_states, load_resume_state, restore_training_state
from segtune.errors import ConfigError, TrainingError, TrainingInterrupted
from segtune.fileio import check_folder, write_text
from segtune.models import MODELS, build_from_config
from segtune.models.precision import autocast
from segtune.runtime import default_workers, seed_everything, seed_worker
from segtune.threads import configure_threads

logger = logging.getLogger("segtune.train")


class Trainer:
    """Trains ``cfg``'s model on ``cfg``'s data; :meth:`fit` runs it (and :func:`train` is the short way).

    Hooks receive the trainer; what they may read: ``cfg`` (frozen: the run never changes it),
    ``run`` (the :class:`~segtune.checkpoint.RunState`: data path, classes, epochs fitted), ``run_dir``,
    ``model`` (unwrapped), ``optimizer``, ``epoch``, ``step``, ``history``; they may set ``stop_training``.
    """

    def __init__(self, cfg: Config, hooks: Sequence[Hook] = (), *, model: nn.Module | None = None,
                 dataset: DetectionDataset | None = None) -> None:
        self.cfg = cfg
        self.user_hooks = list(hooks)
        self._given_model, self._given_dataset = model, dataset
        self.stop_training = False
        self.history: list[dict[str, Any]] = []
        self.epoch = self.step = 0
        self.signals = StopSignals()
        #: The training-time clock (steps and data, not evaluation); a hook that evaluates on its own
        #: pauses it (``with trainer.clock.paused()``).
        self.clock = Stopwatch()
        #: Seconds of training left, if a hook (the time budget) says so; the progress ETA uses it.
        self.time_left = None
        #: Why training ends after this step (a hook called :meth:`end_training`), else None.
        self.end_reason: str | None = None
        self._resume: dict[str, Any] | None = None

    @property
    def _signal(self) -> str | None:
        """The stop signal received (``SIGINT``, ``SIGTERM``), if any."""
        return self.signals.name

    @property
    def max_steps(self) -> int | None:
        """The step where the schedule fitted to the time limit ends (``train.fit_to_time_limit``), else None."""
        return self.run.max_steps

    def end_training(self, reason: str) -> None:
        """End training after this optimiser step: the part-epoch is evaluated and saved as the last one
        (how the time budget stops; setting ``stop_training`` inside an epoch interrupts instead)."""
        self.end_reason = reason

    # --- set-up ---------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.cfg
        self.dist = dist.init_distributed(cfg.train.device)
        self.device = self.dist.device
        self.threads = configure_threads(check_busy=True)
        self.main = self.dist.rank == 0
        if not self.main:  # one process speaks for all; the others only warn
            logging.getLogger("segtune").setLevel(logging.WARNING)
        if not cfg.train.resume:  # a file where the run folder goes: say so now, not after the data check
            check_folder(cfg.train.out, what="run folder (--out)")
        data_cfg = dataclasses.replace(cfg.data, path=resolve_data_path(cfg.data.path))
        resume = None
        if cfg.train.resume:
            resume = load_resume_state(find_resume_checkpoint(cfg.train.resume, cfg.train.out))
        # The data set (and a validation set of its own) is opened once: the data doctor checks it
        # before anything is written, the splits are views of it, the ground truth comes from the test view.
        self.data = open_run_data(data_cfg, given=self._given_dataset, main=self.main,
                                  world_size=self.dist.world_size)
        full = self.full = self.data.full
        self.report = self.data.report
        # What the run learns from the data (and, later, from the clock) is its run state; cfg stays as given.
        self.run = RunState(data_path=str(data_cfg.path), data_format=full.format, classes=list(full.classes),
                            category_ids=list(full.category_ids), epochs=cfg.train.epochs, val_path=cfg.data.val_path)
        learned = run_state_of(resume) if resume is not None else None
        if learned is not None and learned.max_steps is not None:  # a length fitted to the time limit is kept
            self.run.epochs, self.run.max_steps = learned.epochs, learned.max_steps
        spec = MODELS.get(cfg.model.name)
        if spec.has_masks and not full.has_masks:
            raise ConfigError(f"{full.root}: the data set has boxes only, but {cfg.model.name} needs instance masks")
        keypoints = keypoint_info(full)
        if spec.has_keypoints and not keypoints["num_keypoints"]:
            raise ConfigError(f"{full.root}: the data set has no keypoints, but {cfg.model.name} needs them (a COCO "
                              f"person-keypoints file: 'keypoints' in its categories and annotations)")
        self.keypoints = keypoints if spec.has_keypoints else {}
        self.split = self.data.split(cfg.data, resume)
        if cfg.model.adapt_to_data and resume is None:
            composed = cfg.model.fpn and "anchor_sizes" in spec.from_config(cfg.model)
            self.cfg = cfg = adapt_to_data(cfg, self.report, self.split["train"], composed=composed)[0]

        seed_everything(cfg.train.seed, deterministic=cfg.train.deterministic)
        model = self._given_model
        if model is None:
            model = build_from_config(cfg.model, num_classes=len(self.run.classes) + 1, classes=list(self.run.classes),
                                      num_keypoints=self.keypoints.get("num_keypoints"), load_weights=resume is None)
        model = model.to(self.device)
        self.model = model
        self.train_ds = prepare(full, files=self.split["train"], train=True, augment=cfg.train.augment,
                                hflip_prob=cfg.train.hflip_prob, image_size=cfg.model.min_size,
                                lsj_scale=cfg.train.lsj_scale)
        self.test_ds = prepare(self.data.evaluated, files=self.split["test"], train=False)
        self.workers = default_workers(self.device, cfg.data.workers)
        self.train_ds.decoded_cache = make_cache(cfg, self.workers)
        self.generator = torch.Generator()
        sampler = None
        if self.dist.world_size > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(
                self.train_ds, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True,
                seed=cfg.train.seed, drop_last=False)
        self.loader = build_loader(
            self.train_ds, batch_size=cfg.train.batch_size, train=True, workers=self.workers, generator=self.generator,
            aspect_ratio_group_factor=cfg.data.aspect_ratio_group_factor, sampler=sampler, repeat=cfg.train.repeat,
            collate_fn=build_collate(cfg.train.augment, seed=cfg.train.seed), worker_init_fn=seed_worker)
        batches = len(self.loader.batch_sampler)
        self.iters = batches if cfg.train.max_iters_per_epoch is None else min(batches, cfg.train.max_iters_per_epoch)
        self.accumulate = max(1, cfg.train.accumulate)
        steps_per_epoch = math.ceil(self.iters / self.accumulate)
        lr = cfg.train.lr
        if cfg.train.lr_scale_with_batch:
            lr = scaled_lr(lr, cfg.train.batch_size * self.accumulate, self.dist.world_size,
                           cfg.train.lr_scale_with_batch)
        self.optimizer = build_optimizer(
            model, name=cfg.train.optimizer, lr=lr, momentum=cfg.train.momentum, nesterov=cfg.train.nesterov,
            weight_decay=cfg.train.weight_decay, no_decay_norm=cfg.train.no_decay_norm)
        self.scheduler = build_scheduler(
            self.optimizer, iters_per_epoch=steps_per_epoch, schedule=cfg.train.schedule, epochs=cfg.train.epochs,
            warmup_iters=cfg.train.warmup_iters, warmup_factor=cfg.train.warmup_factor, lr_step=cfg.train.lr_step,
            lr_milestones=cfg.train.lr_milestones, lr_gamma=cfg.train.lr_gamma)
        self._setup_amp()
        self.ddp = dist.wrap_ddp(model, self.dist, sync_bn=cfg.train.sync_bn)
        if self.ddp is not model:
            self.model = self.ddp.module  # SyncBatchNorm conversion may have made a new module
        self.start_iteration = 0
        self._resume = resume
        if resume is not None:
            restore_training_state(self, resume)

    def _setup_amp(self) -> None:
        self.autocast_dtype, self.scaler = setup_amp(self.cfg.train.amp, self.device, self.model,
                                                         self.cfg.train.memory_format)

    # --- the loop -------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Run every remaining epoch; see :func:`train`."""
        held = hold_setup_lines()  # the set-up's lines start train.log, once the run folder exists
        try:
            self._setup()
            cfg = self.cfg
            resumed = getattr(self, "resumed_from", None)
            self.run_dir = (Path(resumed).parent.parent if resumed
                            else (new_run_dir(cfg.train.out) if self.main else None))
            self.run_dir = Path(dist.broadcast_object(str(self.run_dir)))
        finally:
            release_setup_lines(held)
        handler = attach_log_file(self.run_dir, held) if self.main else None
        self.hooks = HookList(build_hooks(self) + self.user_hooks)
        if self._resume is not None:
            self.hooks.load_state_dict(hook_states(self._resume))
        try:
            with self.signals:  # Ctrl-C / SIGTERM: stop after this step, with last.pt
                if self.main:
                    # config.yaml is what `segtune train --config` replays, so it never says "resume".
                    write_text(self.run_dir / CONFIG_FILE, dump_yaml(dataclasses.replace(
                        cfg, train=dataclasses.replace(cfg.train, resume=None))))
                    if not resumed:
                        save_split(self.run_dir / SPLIT_FILE, self.split)
                    write_run_state(self.run_dir, self.run)
                    log_run_start(self, resumed)
                self.hooks.before_train(self)
                while self.epoch < self.run.epochs and not self.stop_training:
                    self._run_epoch()
                self.hooks.after_train(self, self.result())
                # Every process leaves together, so none tears its process group down while another
                # is still using it (a lone early exit aborted a Gloo rank at shutdown).
                dist.barrier()
                return self.result()
        finally:
            if handler is not None:
                detach_log_file(handler)
            dist.cleanup()

    def _run_epoch(self) -> None:
        epoch = self.epoch
        self.hooks.before_epoch(self, epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        try:
            losses = self._train_epoch(epoch)
        except TrainingError as e:
            kept = (f"{self.run_dir / 'weights' / 'last.pt'} (epoch {epoch - 1}) is kept" if epoch
                    else "no epoch finished, so no checkpoint was written")
            raise TrainingError(f"{e}; {kept}") from None
        if losses is None:  # stopped by a signal or a hook in the middle of the epoch
            return
        record = {"epoch": epoch, "step": self.step, "lr": lr, "train_time_s": round(self.clock.elapsed, 2),
                  "train": losses}
        self.record = record
        # The evaluation hook adds the metrics, the EMA hook its own, the validation loss "val".
        self.hooks.evaluate(self, epoch, record)
        self.hooks.after_eval(self, epoch, record.get("metrics", {}))
        self.history.append(record)
        self.epoch, self.start_iteration = epoch + 1, 0
        self.hooks.after_epoch(self, epoch, record)  # metrics files and checkpoints first

    def _train_epoch(self, epoch: int) -> dict[str, float] | None:
        """One epoch from ``start_iteration``; None when a stop was asked for before its end."""
        cfg = self.cfg
        self.ddp.train()
        batch_sampler = self.loader.batch_sampler
        if hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(epoch)
        # The order of an epoch depends only on (seed, epoch), so a resumed run draws the same batches
        # and skips the ones already done without loading them.
        self.generator.manual_seed(cfg.train.seed + epoch)
        batches = list(batch_sampler)[: self.iters]
        loader = build_loader_from_batches(self.loader, batches[self.start_iteration:], self.generator)
        report = EpochReporter(epoch, self.iters, device=self.device, print_freq=cfg.train.print_freq,
                               start=self.start_iteration, enabled=self.main)
        if self.time_left is not None:
            report.time_left = self.time_left
        report.end = self._epoch_end(self.start_iteration)
        self.clock.start()
        try:
            return self._train_iterations(epoch, loader, report)
        finally:
            self.clock.stop()

    def _train_iterations(self, epoch: int, loader: torch.utils.data.DataLoader,
                          report: EpochReporter) -> dict[str, float] | None:
        for i, (images, targets) in enumerate(loader, self.start_iteration + 1):
            report.data_ready()
            images = [img.to(self.device, non_blocking=True) for img in images]
            targets = [{k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                       for t in targets]
            with autocast(self.device, self.autocast_dtype):
                loss_dict = self.ddp(images, targets)
            loss = sum(loss_dict.values())
            values = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in loss_dict.items()}}
            if not math.isfinite(values["loss"]):
                report.close()
                terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "loss")
                raise TrainingError(f"loss is {values['loss']} at epoch {epoch}, iteration {i} "
                                    f"(step {self.step + 1}): {terms}; try a lower --lr or --clip-grad-norm")
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses, before the schedule moves on
            last_of_group = i % self.accumulate == 0 or i == self.iters
            # Under DDP, gradients are averaged across processes only on the batch that ends a group.
            sync = contextlib.nullcontext() if last_of_group or self.ddp is self.model else self.ddp.no_sync()
            with sync:
                self.scaler.scale(loss / self.accumulate).backward()
            self._last_losses = values
            if last_of_group:
                self._optimizer_step()
            report.step(i, values, lr)
            if last_of_group:
                report.end = self._epoch_end(i)
            # A stop takes effect between optimiser steps, never inside an accumulation group.
            if last_of_group and i < self.iters and not self._signal and self.end_reason is not None:
                # A hook (the time budget) ends training here; this part-epoch is evaluated and saved
                # as the last one.
                logger.info("%s at epoch %d, iteration %d of %d: evaluating and stopping",
                            self.end_reason, epoch, i, self.iters)
                self.stop_training = True
                return report.close()
            if (self._signal or self.stop_training) and last_of_group and i < self.iters:
                report.close()
                self._interrupt(epoch, i)
                return None
        if self.end_reason is not None and not self.stop_training:
            if self.epoch + 1 < self.run.epochs:
                logger.info("%s at the end of epoch %d: stopping", self.end_reason, epoch)
            self.stop_training = True
        return report.close()

    def _epoch_end(self, i: int) -> int:
        """The iteration this epoch ends at, given ``i`` done and the budget's fitted end (if any)."""
        if self.run.max_steps is None:
            return self.iters
        return min(self.iters, i + max(0, self.run.max_steps - self.step) * self.accumulate)

    def _optimizer_step(self) -> None:
        if self.cfg.train.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.hooks.after_step(self, self.step, self._last_losses)  # before the schedule moves: logs this step's lr
        self.scheduler.step()

    # --- checkpoints ----------------------------------------------------------------------------

    def _interrupt(self, epoch: int, iteration: int) -> None:
        """Write ``last.pt`` at this iteration and stop with a resume hint."""
        why = f"signal {self._signal}" if self._signal else "a hook asked to stop"
        self.hooks.on_interrupt(self, epoch, iteration)  # the checkpoint hook writes last.pt (rank 0)
        dist.barrier()
        message = (f"stopped by {why} at epoch {epoch}, iteration {iteration}; {self.run_dir / 'weights' / 'last.pt'} "
                   f"holds the exact state: resume with  segtune train --resume {self.run_dir}")
        if self._signal:
            raise TrainingInterrupted(message)
        logger.info("%s", message)

    def result(self) -> TrainResult:
        if not self.history:
            return TrainResult(run_dir=self.run_dir, best_epoch=-1, best_metrics={}, history=[])
        best = self._best_index()
        return TrainResult(run_dir=self.run_dir, best_epoch=self.history[best]["epoch"],
                           best_metrics=self.history[best]["metrics"], history=list(self.history))

    def _best_index(self) -> int:
        return best_index(self.history, self.cfg.train.early_stop_metric)


def train(cfg: Config, hooks: Sequence[Hook] = (), *, model: nn.Module | None = None,
          dataset: DetectionDataset | None = None) -> TrainResult:
    """Train, evaluate after every epoch and checkpoint, as ``cfg`` says; return the results.

    ``model`` and ``dataset`` may be built by the caller: a model of the architecture ``cfg.model``
    describes (so its checkpoints load again, e.g. from :func:`segtune.models.build_from_config`
    with weights of your own), and an opened data set (any reader, or your own subclass of
    :class:`segtune.data.DetectionDataset`), which is checked and split as ``cfg.data`` would be.

    Nothing is written until the data has been read in full and the model built, so bad data or
    missing weights leave no run folder behind. ``hooks`` are :class:`segtune.engine.hooks.Hook`
    objects called at the usual points (see there).

    Raises:
        DatasetError, WeightsError, ConfigError: bad input, before anything is written.
        TrainingError: the loss became non-finite (``weights/last.pt`` of the last epoch is kept).
        TrainingInterrupted: Ctrl-C or SIGTERM; ``weights/last.pt`` holds the exact state to resume.
    """
    return Trainer(cfg, hooks, model=model, dataset=dataset).fit()
