"""Owns the TorchScript runtime: a detector written with ``torch.jit.script`` and run by ``torch.jit.load``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segtune.errors import CheckpointError, ExportError
from segtune.runtimes.base import ExportRequest, InferenceOnly, Runtime, register_runtime


class TorchScriptModel(InferenceOnly):
    """An exported TorchScript detector (``torch.jit.load``)."""

    def __init__(self, path: str | Path, *, device: Any = "cpu") -> None:
        try:
            self.module = torch.jit.load(str(path), map_location=torch.device(device)).eval()
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path}: not a loadable TorchScript file ({str(e).splitlines()[0][:300]})") from None
        self.device = torch.device(device)

    def to(self, device: Any) -> TorchScriptModel:
        self.device = torch.device(device)
        self.module = self.module.to(self.device)
        return self

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = self.module([img.to(self.device) for img in images])
        # A scripted torchvision detector returns (losses, detections) in every mode.
        return out[1] if isinstance(out, tuple) else out


class TorchScriptRuntime(Runtime):
    name = "torchscript"
    suffix = ".torchscript"
    description = "torch.jit.script"

    def export(self, model: torch.nn.Module, sample: torch.Tensor, path: Path, request: ExportRequest) -> str:
        try:
            scripted = torch.jit.script(model)
        except Exception as e:  # noqa: BLE001  (the scripting compiler raises many types)
            first = str(e).strip().splitlines()
            raise ExportError(f"this model does not export as TorchScript: {first[0][:300] if first else e}") from None
        scripted.save(str(path))
        return "jit.script"

    def load(self, path: Path, meta: dict[str, Any], *, device: torch.device) -> Any:
        return TorchScriptModel(path, device=device)


TORCHSCRIPT = register_runtime(TorchScriptRuntime())
