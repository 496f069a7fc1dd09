"""``segtune models``: the registered models, their tasks and sizes, and which pretrained weights exist."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.hub
from torchvision.models import get_model_weights

from segtune.errors import SegtuneError
from segtune.models import MODELS, build_model, cache_path
from segtune.models.spec import ModelSpec

#: torchvision's COCO metric keys in ``weights.meta["_metrics"]["COCO-val2017"]`` -> column labels.
_METRICS = {"box_map": "box AP", "mask_map": "mask AP", "kp_map": "keypoint AP"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("models", help="list the models, their tasks, sizes and pretrained weights",
                       description="List every registered model with its task, parameter count and its "
                       "whole-model pretrained weights (COCO AP as torchvision reports it, and whether the "
                       "file is in the local hub cache, $TORCH_HOME/hub/checkpoints).")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.set_defaults(run=run)


def _metrics(entry: Any) -> dict[str, float]:
    # "_metrics" since torchvision 0.15 (the key is private but stable); older releases had "metrics".
    meta = entry.meta.get("_metrics") or entry.meta.get("metrics") or {}
    coco = meta.get("COCO-val2017", {})
    return {key: coco[key] for key in _METRICS if key in coco}


def _parameters(spec: ModelSpec, entries: list[Any]) -> int | None:
    """Parameters of the model as pretrained (COCO-sized heads), counted on the meta device: no memory, no I/O."""
    num_classes = len(entries[0].meta["categories"]) if entries else 91
    try:
        with torch.device("meta"):
            model = build_model(spec.name, num_classes=num_classes, weights="DEFAULT" if entries else "none",
                                weights_backbone="DEFAULT", load_weights=False)
    except SegtuneError:  # a family that needs more settings (e.g. --backbone) has no single size
        return None
    return sum(p.numel() for p in model.parameters())


def describe(spec: ModelSpec) -> dict[str, Any]:
    """One model's row: name, task, description, parameters, and its weights entries."""
    enum = get_model_weights(spec.weights_name) if spec.weights_name else None
    entries = list(enum) if enum is not None else []
    weights = []
    for entry in entries:
        path = cache_path(entry)
        weights.append({
            # "model": whose weights they are; a composed model may start from another model's.
            "name": entry.name, "model": spec.weights_name, "default": entry is enum.DEFAULT, "metrics": _metrics(entry),
            "url": entry.url, "file": str(path), "cached": path.is_file(),
        })
    return {"name": spec.name, "task": spec.task, "description": spec.description,
            "parameters": _parameters(spec, entries), "weights": weights}


def _weights_cell(w: dict[str, Any], model: str) -> str:
    metrics = ", ".join(f"{_METRICS[k]} {v:.1f}" for k, v in w["metrics"].items())
    name = f"{w['name']}{' (DEFAULT)' if w['default'] else ''}"
    if w["model"] != model:
        name = f"{name} of {w['model']}"
    return f"{name}: {metrics or 'no metrics'}; {'cached' if w['cached'] else 'not cached'}"


def _millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}M"


def run(args: argparse.Namespace) -> int:
    rows = [describe(MODELS.get(name)) for name in MODELS.names()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    name_w = max(len("name"), *(len(r["name"]) for r in rows))
    task_w = max(len("task"), *(len(r["task"]) for r in rows))
    print(f"{'name':<{name_w}}  {'task':<{task_w}}  {'params':>7}  weights (COCO val2017 AP)")
    for r in rows:
        cells = [_weights_cell(w, r["name"]) for w in r["weights"]] or ["none (backbone weights only)"]
        print(f"{r['name']:<{name_w}}  {r['task']:<{task_w}}  {_millions(r['parameters']):>7}  {cells[0]}")
        for cell in cells[1:]:
            print(f"{'':<{name_w}}  {'':<{task_w}}  {'':>7}  {cell}")
    print(f"\nweights cache: {Path(torch.hub.get_dir()) / 'checkpoints'} (TORCH_HOME moves it; a file not cached "
          f"is downloaded on first use, or place it there)")
    if any(r["parameters"] is None for r in rows):
        print("params '-': a family whose size depends on --backbone")
    return 0
