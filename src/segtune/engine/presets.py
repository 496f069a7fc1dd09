"""Owns choosing a recipe: applying a named preset under the user's settings, and ``auto``."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch

from segtune.checkpoint import load_checkpoint, run_state_of
from segtune.config import ADAPT_GROUPS, Config, build_config, flatten, load_yaml, preset_layer, resolve_data_path
from segtune.configs import named_config
from segtune.engine.state import find_resume_checkpoint
from segtune.models import default_weights, weights_available

logger = logging.getLogger("segtune.train")

Layer = tuple[str, dict[str, Any]]


#: The model the tutorial recipe fine-tunes (the config default).
TUTORIAL_MODEL = "maskrcnn_resnet50_fpn"
#: The model of the ``cpu-scratch`` preset: a Mask R-CNN composed on a small backbone.
SCRATCH_MODEL = "maskrcnn"


def choose_preset(device: str = "auto", model: str | None = None) -> str:
    """The preset ``auto`` stands for; logs one line saying which and why.

    * ``tutorial`` when a GPU is in use, or the model's COCO weights are at hand (the hub cache, then
      one download attempt, which fails at once with no network);
    * else ``cpu-scratch`` (segtune's recipe for no weights and no GPU, with its own small Mask R-CNN)
      when no model was named (``model`` None) or the named one is that recipe's;
    * else ``cpu-quick``: a short schedule on small images for the model the user named.
    """
    if device != "cpu" and torch.cuda.is_available():
        logger.info("preset auto -> tutorial (a GPU is available)")
        return "tutorial"
    weights = default_weights(model or TUTORIAL_MODEL)
    if weights is not None and weights_available(weights):
        logger.info("preset auto -> tutorial (COCO weights %s are available; on CPU this takes hours)", weights)
        return "tutorial"
    why = ("no GPU and the COCO-pretrained weights could not be loaded or downloaded" if weights is not None
           else f"no GPU, and {model} has no whole-model pretrained weights")
    if model in (None, SCRATCH_MODEL):
        logger.warning("preset auto -> cpu-scratch: %s, so this trains segtune's CPU recipe from random "
                       "initialisation (a small Mask R-CNN, its schedule fitted to train.time_limit).", why)
        return "cpu-scratch"
    logger.warning("preset auto -> cpu-quick: %s, so this runs a short schedule on small images from random "
                   "initialisation.", why)
    return "cpu-quick"


def _keep_given(cfg: Config, given: set[str]) -> Config:
    """``cfg`` without the ``model.adapt_to_data`` groups any of whose settings the user gave (a flag, a
    config file, a resumed run's config): what is given is never fitted over."""
    kept = [g for g in cfg.model.adapt_to_data if not given & set(ADAPT_GROUPS[g])]
    if kept == list(cfg.model.adapt_to_data):
        return cfg
    dropped = [g for g in cfg.model.adapt_to_data if g not in kept]
    logger.info("model.adapt_to_data: %s not fitted to the data: set by you (%s)", ", ".join(dropped),
                ", ".join(sorted(k for g in dropped for k in ADAPT_GROUPS[g] if k in given)))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adapt_to_data=kept))


def configure(*layers: Layer, config: str | os.PathLike | None = None) -> Config:
    """Resolve a :class:`Config`, the one way the CLI and Python both take.

    Precedence, lowest first: the defaults, the preset, a resumed run's own config, ``config``,
    then ``layers`` (flags and overrides, lowest first).

    Args:
        layers: ``(source, {"section.key": value})`` pairs; ``source`` names them in error messages.
        config: a YAML config file, or the name of a packaged config (``segtune.configs``).

    The preset is the last ``train.preset`` any layer sets (default ``tutorial``); ``auto`` is
    resolved by :func:`choose_preset`. When a layer sets ``train.resume`` (a run folder, its
    ``last.pt``, or ``latest``), that run's own config is the layer under everything given here, so
    resuming with nothing else repeats the run.
    """
    user: list[Layer] = []
    if config is not None:
        # A value that is not a file names a packaged config (segtune/configs/NAME.yaml).
        path = Path(config) if Path(config).is_file() else named_config(str(config))
        user.append((str(path), flatten(load_yaml(path))))
    user.extend(layers)
    resume = out = None
    for _, values in user:
        resume = values.get("train.resume", resume)
        out = values.get("train.out", out)
    if resume:
        last = find_resume_checkpoint(str(resume), str(out or "runs/train"))
        ckpt = load_checkpoint(last)
        run_config = flatten(ckpt["config"])
        run_config.pop("train.resume", None)
        run_config["data.path"] = run_state_of(ckpt).data_path  # the data the run read
        user.insert(0, (f"{last} (config of the resumed run)", run_config))
    preset, device, model = "tutorial", "auto", None
    for _, values in user:
        preset = values.get("train.preset", preset)
        device = values.get("train.device", device)
        model = values.get("model.name", model)
    if preset == "auto":
        preset = choose_preset(str(device), None if model is None else str(model))
    stripped = [(src, {k: v for k, v in values.items() if k != "train.preset"}) for src, values in user]
    cfg = build_config(preset_layer(str(preset)), *stripped)
    # A resumed run keeps its fitted values (its own config is the lowest user layer; the trainer fits
    # nothing when resuming), so only what is given on top of it counts here.
    cfg = _keep_given(cfg, {key for _, values in stripped[1 if resume else 0:] for key in values})
    # The data folder's own default ($SEGTUNE_DATA, else the shared Penn-Fudan copy) is part of
    # resolving, so config.yaml names the folder the run reads.
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=resolve_data_path(cfg.data.path)))
