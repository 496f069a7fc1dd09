"""Owns the eager runtime: a segtune checkpoint's model rebuilt and run by PyTorch itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segtune.checkpoint import load_checkpoint
from segtune.models import model_from_checkpoint
from segtune.runtimes.base import Runtime, register_runtime
from segtune.runtimes.loaded import LoadedModel


class EagerRuntime(Runtime):
    """A ``.pt`` checkpoint or a run folder (its ``weights/best.pt``): the model as it trained, batched."""

    name = "eager"
    suffix = None
    description = "the checkpoint's model in PyTorch"
    exports = False

    def open_checkpoint(self, path: Path) -> LoadedModel:
        """Load the checkpoint at ``path`` once and rebuild its model (eval mode, CPU); nothing is downloaded."""
        ckpt = load_checkpoint(path)
        model, cfg = model_from_checkpoint(ckpt)
        classes = list(ckpt["classes"])
        return LoadedModel(model=model, runtime=self.name, path=Path(ckpt["path"]), classes=classes,
                           category_ids=list(ckpt.get("category_ids") or range(1, len(classes) + 1)),
                           mask_threshold=float(cfg.eval.mask_threshold), keypoint_names=ckpt.get("keypoint_names"),
                           skeleton=ckpt.get("skeleton"), checkpoint=ckpt, config=cfg)

    def load(self, path: Path, meta: dict[str, Any], *, device: torch.device) -> Any:
        return self.open_checkpoint(path).model.to(device)


EAGER = register_runtime(EagerRuntime())
