"""Owns opening a model for inference, once per command: a segtune checkpoint (its eager model) or an
exported file (the runtime its suffix names), with what labels its answers, and the data split it was
trained against. This is the one place that decides "exported file or checkpoint?"."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segtune.checkpoint import checkpoint_data, load_checkpoint
from segtune.config import Config, DataConfig
from segtune.errors import CheckpointError, ConfigError
from segtune.runtimes.base import RUNTIMES, read_sidecar, runtime_for_suffix


@dataclass
class LoadedModel:
    """A model ready to run, and what its answers mean.

    Attributes:
        model: the eager ``nn.Module`` (eval mode, CPU) or a runtime's runner: ``[float[3, H, W]] -> [dict]``.
        runtime: the runtime's name (``eager``, ``onnx``, ``torchscript``, ...).
        path: the file opened (a run folder's ``weights/best.pt`` for a folder).
        classes: class names, background excluded; ``category_ids`` the data set's id of each.
        mask_threshold: the soft-mask threshold the model was evaluated with.
        checkpoint: the checkpoint dict (the eager runtime; an exported file's source checkpoint is
            loaded only when its split is asked for, :meth:`split_data`).
        config: the run's config (eager runtime only).
        meta: an exported file's sidecar.
    """

    model: Any
    runtime: str
    path: Path
    classes: list[str]
    category_ids: list[int]
    mask_threshold: float = 0.5
    keypoint_names: list[str] | None = None
    skeleton: list[list[int]] | None = None
    checkpoint: dict[str, Any] | None = field(default=None, repr=False)
    config: Config | None = field(default=None, repr=False)
    meta: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def exported(self) -> bool:
        return self.meta is not None

    def source_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint the model comes from: its own, or the one an exported file was exported from (if
        it is still there); None for an exported file whose checkpoint is gone."""
        if self.checkpoint is not None:
            return self.checkpoint
        source = Path((self.meta or {}).get("checkpoint") or "")
        return load_checkpoint(source) if source.is_file() else None

    def split_data(self, split: str, data: str | None = None) -> tuple[DataConfig, list[str] | None]:
        """``(data settings, file names)`` of the run's ``split`` (``test``, ``train``, or ``all``: every image).

        Raises:
            CheckpointError: an exported file's checkpoint is gone and ``split`` is not ``all`` with ``data``.
        """
        ckpt = self.source_checkpoint()
        if ckpt is None:
            if data and split == "all":
                return DataConfig(path=data), None
            raise CheckpointError(f"{self.path}: its checkpoint {self.meta.get('checkpoint')} is gone, so its {split} "
                                  "split is unknown: give --data PATH --split all")
        files = None if split == "all" else ckpt.get("split", {}).get(split)
        return checkpoint_data(ckpt, data, split), files


def open_model(path: str | os.PathLike, *, device: torch.device | str = "cpu", amp: str = "auto") -> LoadedModel:
    """Open ``path`` for inference: a ``.pt`` checkpoint or a run folder (its eager model), or a file written
    by ``segtune export`` (chosen by its suffix among the registered runtimes).

    ``amp`` (none | bf16 | auto) is for a checkpoint's eager model (the caller readies it,
    :func:`~segtune.models.precision.inference_precision`); an exported file runs in the number format
    it was exported in, so ``bf16`` with one is a ConfigError (``none`` and ``auto`` take the file as it is).

    Raises:
        CheckpointError: the file is missing, unreadable, or not what its suffix says.
    """
    path = Path(path)
    runtime = runtime_for_suffix(path)
    if runtime is None:
        return RUNTIMES.get("eager").open_checkpoint(path)
    if amp not in ("none", "auto"):
        raise ConfigError(f"{path}: --amp {amp} runs a checkpoint's model under autocast; an exported file runs as "
                          "it was exported (give the checkpoint, or leave --amp out)")
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    meta = read_sidecar(path)
    if meta["format"] != runtime.name:
        raise CheckpointError(f"{path}: its sidecar describes a {meta['format']} file, not {runtime.name}")
    model = runtime.load(path, meta, device=torch.device(device))
    return LoadedModel(model=model, runtime=runtime.name, path=path, classes=list(meta["classes"]),
                       category_ids=list(meta.get("category_ids") or range(1, len(meta["classes"]) + 1)),
                       mask_threshold=float(meta.get("mask_threshold", 0.5)),
                       keypoint_names=meta.get("keypoint_names"), skeleton=meta.get("skeleton"), meta=meta)

