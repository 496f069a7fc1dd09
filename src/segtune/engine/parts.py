"""Owns building a run's parts from its config: each ``build_*`` function makes one, :func:`build_parts` all of them.

The :class:`~segtune.engine.trainer.Trainer` is handed what these make and only runs it, as Detectron2's
``SimpleTrainer`` runs what ``DefaultTrainer.build_*`` made. The order of :func:`build_parts` is part of
the contract: nothing is written before the data has been checked and the model built (bad input
leaves no run folder behind), the seed is set just before the model is built (its initialisation and
every draw after it are the seed's), and a resumed run's state goes back in only once every part
exists (:class:`~segtune.engine.state.TrainingState`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from segtune.checkpoint import RunState, keypoint_info, run_state_of
from segtune.config import Config, resolve_data_path
from segtune.data import DetectionDataset, build_collate, prepare
from segtune.data.build import build_loader
from segtune.data.decoded_cache import make_cache
from segtune.engine import distributed as dist
from segtune.engine import optim
from segtune.engine.adapt import adapt_to_data
from segtune.engine.amp import setup_amp
from segtune.engine.distributed import DistInfo
from segtune.engine.run_data import RunData, open_run_data
from segtune.engine.state import find_resume_checkpoint, load_resume_state
from segtune.errors import ConfigError
from segtune.fileio import check_folder
from segtune.models import MODELS, build_from_config
from segtune.models.spec import ModelSpec
from segtune.machine import default_workers, seed_everything, seed_worker
from segtune.threads import configure_threads


@dataclass
class TrainingParts:
    """Everything a run is made of, built from its config before the first step (:func:`build_parts`).

    Attributes:
        cfg: the run's config: the one given, with ``model.adapt_to_data``'s settings fitted to the data
            (a new run only); fixed from here on (``config.yaml`` and every checkpoint hold it).
        dist: this process's rank, world size, backend and device.
        data: the data sets, each opened and checked once, with the data doctor's reports.
        run: the run state: data path and format, classes, the epochs to go to (a resumed run's fitted length).
        split: the train and test file names, and where the split came from.
        keypoints: the checkpoints' keypoint keys (``num_keypoints``, ...); empty for models without keypoints.
        model: the model being trained, on ``dist.device``; what checkpoints save.
        ddp: what a training step calls: ``model`` in ``DistributedDataParallel``, or ``model`` itself alone.
        train_ds: the training view of ``data`` (augmented).
        test_ds: the evaluated view (the test split, evaluation transforms).
        workers: loader worker processes.
        loader: the training loader; each epoch's batches are cut from its batch sampler.
        generator: the loader's random stream, reseeded with ``train.seed + epoch`` at each epoch.
        iters: batches per epoch (``train.max_iters_per_epoch`` caps them).
        accumulate: batches per optimiser step.
        optimizer: the optimiser over ``model``'s parameters.
        scheduler: the per-step learning-rate schedule.
        autocast_dtype: the autocast dtype of a step (None: no autocast).
        scaler: the grad scaler (enabled for fp16 only).
        resume: the ``last.pt`` being resumed, as loaded; None for a new run.
    """

    cfg: Config
    dist: DistInfo
    data: RunData
    run: RunState
    split: dict[str, Any]
    keypoints: dict[str, Any]
    model: nn.Module
    ddp: nn.Module
    train_ds: DetectionDataset
    test_ds: DetectionDataset
    workers: int
    loader: torch.utils.data.DataLoader
    generator: torch.Generator
    iters: int
    accumulate: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    resume: dict[str, Any] | None


def build_distributed(cfg: Config) -> DistInfo:
    """Join the process group a launcher describes (or describe one process), set torch's threads,
    and leave only warnings to every process but the first (one speaks for all)."""
    info = dist.init_distributed(cfg.train.device)
    configure_threads(check_busy=True)
    if info.rank != 0:
        logging.getLogger("segtune").setLevel(logging.WARNING)
    return info


def build_run_state(cfg: Config, data: RunData, data_path: str, resume: dict[str, Any] | None) -> RunState:
    """What the run learns, from the opened data; a resumed run keeps the length fitted to its time limit."""
    full = data.full
    run = RunState(data_path=str(data_path), data_format=full.format, classes=list(full.classes),
                   category_ids=list(full.category_ids), epochs=cfg.train.epochs, val_path=cfg.data.val_path)
    learned = run_state_of(resume) if resume is not None else None
    if learned is not None and learned.max_steps is not None:
        run.epochs, run.max_steps = learned.epochs, learned.max_steps
    return run


def check_model_fits_data(cfg: Config, spec: ModelSpec, full: DetectionDataset) -> dict[str, Any]:
    """The checkpoints' keypoint keys for ``spec``'s model (empty without keypoints).

    Raises:
        ConfigError: the model needs instance masks or keypoints that the data set does not have.
    """
    if spec.has_masks and not full.has_masks:
        raise ConfigError(f"{full.root}: the data set has boxes only, but {cfg.model.name} needs instance masks")
    keypoints = keypoint_info(full)
    if spec.has_keypoints and not keypoints["num_keypoints"]:
        raise ConfigError(f"{full.root}: the data set has no keypoints, but {cfg.model.name} needs them (a COCO "
                          f"person-keypoints file: 'keypoints' in its categories and annotations)")
    return keypoints if spec.has_keypoints else {}


def fit_config_to_data(cfg: Config, spec: ModelSpec, data: RunData, split: dict[str, Any],
                       resume: dict[str, Any] | None) -> Config:
    """``cfg`` with the ``model.adapt_to_data`` groups fitted to the training images (a new run only: a
    resumed run's config holds what was fitted when it started)."""
    if not cfg.model.adapt_to_data or resume is not None:
        return cfg
    # Anchors are settings to fit only where the model's declaration says so (the custom-backbone
    # families) and there is an FPN to place them on.
    composed = bool(cfg.model.fpn and spec.fits_anchors)
    return adapt_to_data(cfg, data.report, split["train"], composed=composed)[0]


def build_model(cfg: Config, run: RunState, keypoints: dict[str, Any], device: torch.device, *,
                given: nn.Module | None = None, load_weights: bool = True) -> nn.Module:
    """``cfg.model``'s model for the run's classes (or the caller's ``given`` one), on ``device``.

    ``load_weights=False`` skips the pretrained weights (a resumed run loads its own).
    """
    model = given
    if model is None:
        model = build_from_config(cfg.model, num_classes=len(run.classes) + 1, classes=list(run.classes),
                                  num_keypoints=keypoints.get("num_keypoints"), load_weights=load_weights)
    return model.to(device)


def build_datasets(cfg: Config, data: RunData, split: dict[str, Any],
                   workers: int) -> tuple[DetectionDataset, DetectionDataset]:
    """The training view (augmented, with the decoded-image cache ``data.cache`` asks for) and the test
    view of the opened data sets; nothing is read again."""
    train_ds = prepare(data.full, files=split["train"], train=True, augment=cfg.train.augment,
                       hflip_prob=cfg.train.hflip_prob, image_size=cfg.model.min_size, lsj_scale=cfg.train.lsj_scale)
    test_ds = prepare(data.evaluated, files=split["test"], train=False)
    train_ds.decoded_cache = make_cache(cfg, workers)
    return train_ds, test_ds


def build_train_loader(cfg: Config, train_ds: DetectionDataset, info: DistInfo, workers: int,
                       generator: torch.Generator) -> torch.utils.data.DataLoader:
    """The training loader: shuffled by ``generator`` (one shard per process under torch.distributed)."""
    sampler = None
    if info.world_size > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(
            train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.train.seed,
            drop_last=False)
    return build_loader(
        train_ds, batch_size=cfg.train.batch_size, train=True, workers=workers, generator=generator,
        aspect_ratio_group_factor=cfg.data.aspect_ratio_group_factor, sampler=sampler, repeat=cfg.train.repeat,
        collate_fn=build_collate(cfg.train.augment, seed=cfg.train.seed), worker_init_fn=seed_worker)


def build_optimizer(cfg: Config, model: nn.Module, *, accumulate: int, world_size: int) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``model`` (:func:`segtune.engine.optim.build_optimizer`), its learning rate
    scaled to the total batch when ``train.lr_scale_with_batch`` says so."""
    train = cfg.train
    lr = train.lr
    if train.lr_scale_with_batch:
        lr = optim.scaled_lr(lr, train.batch_size * accumulate, world_size, train.lr_scale_with_batch)
    return optim.build_optimizer(model, name=train.optimizer, lr=lr, momentum=train.momentum,
                                 nesterov=train.nesterov, weight_decay=train.weight_decay,
                                 no_decay_norm=train.no_decay_norm)


def build_schedule(cfg: Config, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``train.schedule`` with its warm-up, stepped after every optimiser step
    (:func:`segtune.engine.optim.build_scheduler`)."""
    train = cfg.train
    return optim.build_scheduler(
        optimizer, iters_per_epoch=steps_per_epoch, schedule=train.schedule, epochs=train.epochs,
        warmup_iters=train.warmup_iters, warmup_factor=train.warmup_factor, lr_step=train.lr_step,
        lr_milestones=train.lr_milestones, lr_gamma=train.lr_gamma)


def build_parts(cfg: Config, *, model: nn.Module | None = None,
                dataset: DetectionDataset | None = None) -> TrainingParts:
    """Every part of the run ``cfg`` describes, in the order the module docstring explains.

    Args:
        cfg: the resolved config (:func:`segtune.engine.configure`).
        model: a model the caller built (of the architecture ``cfg.model`` describes); None: built here.
        dataset: an opened data set the caller made; None: ``cfg.data`` is opened.

    Raises:
        DatasetError, WeightsError, ConfigError: bad input; nothing has been written.
        CheckpointError: ``train.resume`` names a file that cannot be resumed from.
    """
    info = build_distributed(cfg)
    if not cfg.train.resume:  # a file where the run folder goes: say so now, not after the data check
        check_folder(cfg.train.out, what="run folder (--out)")
    data_path = resolve_data_path(cfg.data.path)
    resume = None
    if cfg.train.resume:
        resume = load_resume_state(find_resume_checkpoint(cfg.train.resume, cfg.train.out))
    # The data set (and a validation set of its own) is opened once: the data doctor checks it before
    # anything is written, the splits are views of it, the ground truth comes from the test view.
    data = open_run_data(dataclasses.replace(cfg.data, path=data_path), given=dataset, main=info.rank == 0,
                         world_size=info.world_size)
    run = build_run_state(cfg, data, data_path, resume)
    spec = MODELS.get(cfg.model.name)
    keypoints = check_model_fits_data(cfg, spec, data.full)
    split = data.split(cfg.data, resume)
    cfg = fit_config_to_data(cfg, spec, data, split, resume)  # the config every later part is built from

    seed_everything(cfg.train.seed, deterministic=cfg.train.deterministic)
    model = build_model(cfg, run, keypoints, info.device, given=model, load_weights=resume is None)
    workers = default_workers(info.device, cfg.data.workers)
    train_ds, test_ds = build_datasets(cfg, data, split, workers)
    generator = torch.Generator()
    loader = build_train_loader(cfg, train_ds, info, workers, generator)
    batches = len(loader.batch_sampler)
    iters = batches if cfg.train.max_iters_per_epoch is None else min(batches, cfg.train.max_iters_per_epoch)
    accumulate = max(1, cfg.train.accumulate)
    optimizer = build_optimizer(cfg, model, accumulate=accumulate, world_size=info.world_size)
    scheduler = build_schedule(cfg, optimizer, steps_per_epoch=math.ceil(iters / accumulate))
    autocast_dtype, scaler = setup_amp(cfg.train.amp, info.device, model, cfg.train.memory_format)
    ddp = dist.wrap_ddp(model, info, sync_bn=cfg.train.sync_bn)
    if ddp is not model:
        model = ddp.module  # SyncBatchNorm conversion may have made a new module
    return TrainingParts(cfg=cfg, dist=info, data=data, run=run, split=split, keypoints=keypoints, model=model,
                         ddp=ddp, train_ds=train_ds, test_ds=test_ds, workers=workers, loader=loader,
                         generator=generator, iters=iters, accumulate=accumulate, optimizer=optimizer,
                         scheduler=scheduler, autocast_dtype=autocast_dtype, scaler=scaler, resume=resume)
