"""Owns the named recipes (``--preset``): dotted overrides applied on top of the config defaults.

The defaults themselves are the torchvision tutorial (``tutorial``); ``auto`` is not a recipe but a
choice among these, made by :func:`segtune.engine.presets.choose_preset`.
"""

from __future__ import annotations

from typing import Any

from segtune.errors import ConfigError

#: What both CPU presets share: no weights to download, 320-512 px inputs, fewer RPN proposals.
_CPU_INPUT: dict[str, Any] = {
    "model.weights": "none",
    "model.weights_backbone": "none",
    "model.min_size": 320,
    "model.max_size": 512,
    "model.rpn_pre_nms_top_n_train": 600,
    "model.rpn_post_nms_top_n_train": 300,
    "model.rpn_pre_nms_top_n_test": 300,
    "model.rpn_post_nms_top_n_test": 150,
}

#: Named recipes, as dotted overrides on top of the defaults (the defaults are ``tutorial``).
PRESETS: dict[str, dict[str, Any]] = {
    # The torchvision fine-tuning tutorial: COCO-pretrained Mask R-CNN, 10 epochs, batch 2.
    "tutorial": {},
    # A short schedule that finishes in minutes on a 2-core CPU without pretrained weights: smaller
    # images, fewer proposals and RoI samples, a capped number of iterations. It shows the whole
    # pipeline working; accuracy from random initialisation in minutes is near zero.
    "cpu-quick": {
        **_CPU_INPUT,
        "model.box_batch_size_per_image": 128,
        "train.epochs": 2,
        "train.lr": 0.005,
        "train.warmup_iters": 30,
        "train.clip_grad_norm": 5.0,  # from random init the first mask losses are large; keep steps sane
        "train.lr_step": 2,
        "train.max_iters_per_epoch": 60,
    },
    # The recipe for "no pretrained weights and no GPU": a Mask R-CNN small enough to take thousands
    # of steps in an hour on a 2-core CPU, with normalisation that trains from scratch. Chosen by the
    # search recorded in benchmarks/results/recipe_search.jsonl (docs/cpu-recipe.md).
    "cpu-scratch": {
        "model.name": "maskrcnn",
        "model.backbone": "resnet18",
        "model.norm": "gn",
        "model.fpn_channels": 128,
        "model.fpn_levels": 3,
        "model.head_norm": "gn",
        "model.box_head_convs": 2,
        "model.box_head_dim": 512,
        "model.mask_head_channels": 128,
        "model.mask_hidden": 128,
        "model.anchor_sizes": [32, 64, 128, 256],
        "model.aspect_ratios": [1.0, 2.0, 3.0],
        **_CPU_INPUT,
        "model.box_batch_size_per_image": 64,  # the mask head runs on every positive RoI: fewer, faster steps
        "train.batch_size": 4,
        "train.optimizer": "adamw",
        "train.lr": 0.001,
        "train.weight_decay": 0.05,
        "train.schedule": "cosine",
        "train.warmup_iters": 100,
        "train.clip_grad_norm": 10.0,
        # Strong augmentation for 120 images: large-scale jitter of the 320-px square (0.5-1.5) and
        # copy-paste of instances between the images of a batch. Slower in the first minutes, but the
        # hour does not flatten (docs/cpu-recipe.md: 3 seeds with and without).
        "train.augment": ["hflip", "lsj", "copypaste"],
        "train.lsj_scale": [0.5, 1.5],
        "train.amp": "auto",  # bf16 + channels-last where the CPU runs bf16 natively (1.3x the steps); fp32 elsewhere
        "train.repeat": 10,
        "train.epochs": 100,  # an upper bound: the schedule is fitted to the time limit
        "train.time_limit": 60,
        "train.fit_to_time_limit": True,
    },
}


def preset_layer(name: str) -> tuple[str, dict[str, Any]]:
    if name not in PRESETS:
        raise ConfigError(f"preset '{name}' is unknown; choose one of: {', '.join(PRESETS)}, auto")
    return (f"preset {name}", {**PRESETS[name], "train.preset": name})


