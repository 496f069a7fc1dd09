"""Owns the training loop: epochs of steps over the parts it is handed, resume and stops; everything else is a hook.

The parts (model, data, loaders, optimiser, schedule, number formats, DDP) are built from the config
by :mod:`segtune.engine.parts`; the loop does the steps: mixed precision, accumulation, clipping,
DistributedDataParallel, and fires the hooks; under torch.distributed a rank that loses its peers
writes ``last.pt`` on rank 0 and stops with one line (:mod:`segtune.engine.faults`). Evaluation,
checkpoints, the time budget, EMA, the metrics files, the plot, TensorBoard, early stopping and the validation loss are hooks
(``segtune.engine.default_hooks``), as are the user's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segtune.checkpoint import RunState
from segtune.config import Config, dump_yaml
from segtune.data import DetectionDataset, save_split
from segtune.data.build import build_loader_from_batches
from segtune.engine import distributed as dist
from segtune.engine import faults
from segtune.engine.budget import Stopwatch
from segtune.engine.checkpoints import best_index
from segtune.engine.default_hooks import build_hooks
from segtune.engine.distributed import DistInfo
from segtune.engine.hooks import Hook, HookList
from segtune.engine.logger import EpochReporter, log_run_start
from segtune.engine.parts import TrainingParts, build_parts
from segtune.engine.run import (CONFIG_FILE, SPLIT_FILE, TrainResult, attach_log_file, detach_log_file,
                                hold_setup_lines, new_run_dir, release_setup_lines, write_run_state)
from segtune.engine.run_data import RunData
from segtune.engine.signals import StopSignals
from segtune.engine.state import TrainingState
from segtune.errors import DistributedError, TrainingError, TrainingInterrupted
from segtune.fileio import write_text
from segtune.models.precision import autocast
from segtune.run_files import last_checkpoint, run_dir_of

logger = logging.getLogger("segtune.train")


class Trainer:
    """Runs the training loop over a run's parts; :meth:`fit` runs it (and :func:`train` is the short way).

    ``Trainer(cfg, hooks, model=..., dataset=...)`` builds its parts from ``cfg`` when :meth:`fit`
    starts (:func:`~segtune.engine.parts.build_parts`, so the set-up's log lines start the run's
    ``train.log``); :meth:`from_parts` is handed parts built already. Hooks receive the trainer and
    read what :class:`~segtune.engine.hooks.TrainerView` lists: the parts below, the run folder and
    the loop's position; they may set ``stop_training`` or call :meth:`end_training`.

    Attributes:
        cfg: the run's config: as given, then (a new run with ``model.adapt_to_data``) with settings
            fitted to the data once the parts are built; fixed from there on.
        dist, device, data, run, split, keypoints, model, train_ds, test_ds, workers, iters,
            accumulate, optimizer, scheduler, autocast_dtype, scaler: the parts
            (:class:`~segtune.engine.parts.TrainingParts`), once built.
        run_dir: the run folder, once :meth:`fit` has made (or, resuming, found) it.
        hooks: the built-in hooks the config turns on, then the user's, once :meth:`fit` has made them.
        epoch, step, start_iteration, history, clock: where the run stands (what ``last.pt`` keeps).
        stop_training, end_reason, time_left: see :class:`~segtune.engine.hooks.TrainerView`.
    """

    # The parts, once built (see TrainingParts).
    dist: DistInfo
    device: torch.device
    data: RunData
    run: RunState
    split: dict[str, Any]
    keypoints: dict[str, Any]
    model: nn.Module
    train_ds: DetectionDataset
    test_ds: DetectionDataset
    workers: int
    iters: int
    accumulate: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    # Made by fit.
    run_dir: Path
    hooks: HookList

    def __init__(self, cfg: Config, hooks: Sequence[Hook] = (), *, model: nn.Module | None = None,
                 dataset: DetectionDataset | None = None) -> None:
        self.cfg = cfg
        self.user_hooks = list(hooks)
        self._build: Callable[[], TrainingParts] = functools.partial(build_parts, cfg, model=model, dataset=dataset)
        self._parts: TrainingParts | None = None
        self.stop_training = False
        self.history: list[dict[str, Any]] = []
        self.epoch = self.step = self.start_iteration = 0
        self.signals = StopSignals()
        #: The signal every rank stops for after this step (one of them received it), else None.
        self.stop_signal: str | None = None
        self._done = 0  # batches of the current epoch that the weights have taken (up to the last optimiser step)
        self._saved_at: tuple[int, int] | None = None  # (epoch, batch) that last.pt holds, as far as this run knows
        #: The training-time clock (steps and data, not evaluation); a hook that evaluates on its own
        #: pauses it (``with trainer.clock.paused()``).
        self.clock = Stopwatch()
        #: Seconds of training left, if a hook (the time budget) says so; the progress ETA uses it.
        self.time_left: Callable[[], float] | None = None
        #: Why training ends after this step (a hook called :meth:`end_training`), else None.
        self.end_reason: str | None = None
        #: The ``last.pt`` this run goes on from (``TrainingState.load_state_dict`` sets it), else None.
        self.resumed_from: str | None = None
        self._last_losses: dict[str, float] = {}

    @classmethod
    def from_parts(cls, parts: TrainingParts, hooks: Sequence[Hook] = ()) -> Trainer:
        """A trainer handed parts built already (e.g. by :func:`~segtune.engine.parts.build_parts` with
        some replaced); a resumed run's state goes back into them now."""
        trainer = cls(parts.cfg, hooks)
        trainer._take(parts)
        return trainer

    def _take(self, parts: TrainingParts) -> None:
        """Hold ``parts`` as the attributes hooks read; put a resumed run's state back into them."""
        self._parts = parts
        self.cfg = parts.cfg  # fitted to the data, if model.adapt_to_data said so
        self.dist, self.device, self._main = parts.dist, parts.dist.device, parts.dist.rank == 0
        self.data, self.run, self.split, self.keypoints = parts.data, parts.run, parts.split, parts.keypoints
        self.model, self.ddp = parts.model, parts.ddp
        self.train_ds, self.test_ds, self.workers = parts.train_ds, parts.test_ds, parts.workers
        self.loader, self.generator = parts.loader, parts.generator
        self.iters, self.accumulate = parts.iters, parts.accumulate
        self.optimizer, self.scheduler = parts.optimizer, parts.scheduler
        self.autocast_dtype, self.scaler = parts.autocast_dtype, parts.scaler
        if parts.resume is not None:
            TrainingState(self).load_state_dict(parts.resume)
            self._done = self.start_iteration
            self._saved_at = (self.epoch, self.start_iteration)

    @property
    def max_steps(self) -> int | None:
        """The step where the schedule fitted to the time limit ends (``train.fit_to_time_limit``), else None."""
        return self.run.max_steps

    def end_training(self, reason: str) -> None:
        """End training after this optimiser step: the part-epoch is evaluated and saved as the last one
        (how the time budget stops; setting ``stop_training`` inside an epoch interrupts instead)."""
        self.end_reason = reason

    # --- the loop -------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Build the parts (unless handed them), then run every remaining epoch; see :func:`train`."""
        held = hold_setup_lines()  # the set-up's lines start train.log, once the run folder exists
        try:
            if self._parts is None:
                self._take(self._build())
            resumed = self.resumed_from
            run_dir = run_dir_of(resumed) if resumed else (new_run_dir(self.cfg.train.out) if self._main else None)
            self.run_dir = Path(dist.broadcast_object(str(run_dir)))
        except Exception as exc:
            if not faults.is_peer_failure(exc):
                raise
            # Another rank died while the run was being set up: nothing to save yet.
            raise faults.peer_failure_error(exc, rank=dist.get_rank(), world_size=dist.get_world_size(),
                                            where="while the run was set up",
                                            timeout_s=dist.timeout_from_env()) from exc
        finally:
            release_setup_lines(held)
        handler = attach_log_file(self.run_dir, held) if self._main else None
        self.hooks = HookList(build_hooks(self) + self.user_hooks)
        if self._parts.resume is not None:
            TrainingState(self).load_hook_states(self._parts.resume)
        try:
            with self.signals:  # Ctrl-C / SIGTERM: stop after this step, with last.pt
                try:
                    return self._train(resumed)
                except Exception as exc:
                    if not faults.is_peer_failure(exc):
                        raise
                    raise self._lost_peers(exc) from exc
        finally:
            if handler is not None:
                detach_log_file(handler)
            dist.cleanup()

    def _train(self, resumed: str | None) -> TrainResult:
        if self._main:
            self._write_run_files(resumed)
            log_run_start(self, resumed)
        self.hooks.before_train(self)
        while self.epoch < self.run.epochs and not self.stop_training:
            self._run_epoch()
        self.hooks.after_train(self, self.result())
        # Every process leaves together, so none tears its process group down while another
        # is still using it (a lone early exit aborted a Gloo rank at shutdown).
        dist.barrier()
        return self.result()

    def _write_run_files(self, resumed: str | None) -> None:
        # config.yaml is what `segtune train --config` replays, so it never says "resume".
        write_text(self.run_dir / CONFIG_FILE, dump_yaml(dataclasses.replace(
            self.cfg, train=dataclasses.replace(self.cfg.train, resume=None))))
        if not resumed:
            save_split(self.run_dir / SPLIT_FILE, self.split)
        write_run_state(self.run_dir, self.run)

    def _run_epoch(self) -> None:
        epoch = self.epoch
        self.hooks.before_epoch(self, epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        try:
            losses = self._train_epoch(epoch)
        except TrainingError as e:
            kept = (f"{last_checkpoint(self.run_dir)} (epoch {epoch - 1}) is kept" if epoch
                    else "no epoch finished, so no checkpoint was written")
            raise TrainingError(f"{e}; {kept}") from None
        if losses is None:  # stopped by a signal or a hook in the middle of the epoch
            return
        record = {"epoch": epoch, "step": self.step, "lr": lr, "train_time_s": round(self.clock.elapsed, 2),
                  "train": losses}
        # The evaluation hook adds the metrics, the EMA hook its own, the validation loss "val".
        self.hooks.evaluate(self, epoch, record)
        self.hooks.after_eval(self, epoch, record.get("metrics", {}))
        self.history.append(record)
        self.epoch, self.start_iteration, self._done = epoch + 1, 0, 0
        self.hooks.after_epoch(self, epoch, record)  # metrics files and checkpoints first
        self._saved_at = (self.epoch, 0)

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
                               start=self.start_iteration, enabled=self._main)
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
                self._optimizer_step(i)
            report.step(i, values, lr)
            if last_of_group:
                report.end = self._epoch_end(i)
            if not last_of_group or i == self.iters:
                continue
            # A stop takes effect between optimiser steps, never inside an accumulation group; every rank
            # hears of a signal any of them received, so all stop after this same step.
            self.stop_signal = self.signals.agreed(dist.max_over_ranks)
            if self.stop_signal is None and self.end_reason is not None:
                # A hook (the time budget) ends training here; this part-epoch is evaluated and saved
                # as the last one.
                logger.info("%s at epoch %d, iteration %d of %d: evaluating and stopping",
                            self.end_reason, epoch, i, self.iters)
                self.stop_training = True
                return report.close()
            if self.stop_signal or self.stop_training:
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

    def _optimizer_step(self, i: int) -> None:
        """The optimiser step that ends at batch ``i`` of the epoch."""
        if self.cfg.train.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._done = i
        try:
            self.hooks.after_step(self, self.step, self._last_losses)  # before the schedule moves: logs this step's lr
        finally:
            self.scheduler.step()  # also when a hook's collective fails: last.pt then holds a schedule in step

    # --- stops and the result -------------------------------------------------------------------

    def _interrupt(self, epoch: int, iteration: int) -> None:
        """Write ``last.pt`` at this iteration and stop with a resume hint."""
        why = f"signal {self.stop_signal}" if self.stop_signal else "a hook asked to stop"
        self.hooks.on_interrupt(self, epoch, iteration)  # the checkpoint hook writes last.pt (rank 0)
        self._saved_at = (epoch, iteration)
        dist.barrier()
        message = (f"stopped by {why} at epoch {epoch}, iteration {iteration}; {last_checkpoint(self.run_dir)} "
                   f"holds the exact state: resume with  segtune train --resume {self.run_dir}")
        if self.stop_signal:
            if self.dist.distributed:
                self.signals.ignore_sigterm()  # every rank is leaving: say why before the launcher's SIGTERM
            raise TrainingInterrupted(message)
        logger.info("%s", message)

    def _lost_peers(self, exc: BaseException) -> DistributedError:
        """A collective raised for a rank that died or went silent: rank 0 writes ``last.pt`` at the last
        optimiser step it completed (no collective: the others are gone, and DDP keeps every rank's weights
        the same); the others write nothing. Returns the error this rank stops with."""
        if self.dist.distributed:
            self.signals.ignore_sigterm()  # the launcher's SIGTERM must not cut the save or the report short
        epoch, iteration = self.epoch, self._done
        checkpoint = None
        if self._main and self.step > 0:
            if self._saved_at != (epoch, iteration):
                self.hooks.on_interrupt(self, epoch, iteration)  # the checkpoint hook writes last.pt
                self._saved_at = (epoch, iteration)
            if last_checkpoint(self.run_dir).is_file():
                checkpoint = last_checkpoint(self.run_dir)
        return faults.peer_failure_error(exc, rank=self.dist.rank, world_size=self.dist.world_size,
                                         where=f"in epoch {epoch} after iteration {iteration}",
                                         timeout_s=self.dist.timeout_s, run_dir=self.run_dir,
                                         checkpoint=checkpoint, step=self.step)

    def result(self) -> TrainResult:
        """The run folder, the best epoch (:func:`~segtune.engine.checkpoints.best_index`) and every epoch's record."""
        if not self.history:
            return TrainResult(run_dir=self.run_dir, best_epoch=-1, best_metrics={}, history=[])
        best = best_index(self.history, self.cfg.train.early_stop_metric)
        return TrainResult(run_dir=self.run_dir, best_epoch=self.history[best]["epoch"],
                           best_metrics=self.history[best]["metrics"], history=list(self.history))


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
        DistributedError: under torch.distributed, another rank died or stopped answering; rank 0 wrote
            ``weights/last.pt`` at the last step it completed.
    """
    return Trainer(cfg, hooks, model=model, dataset=dataset).fit()
