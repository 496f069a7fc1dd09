"""Owns loading a model exported by ``segtune export``: an ONNX file (run by ONNX Runtime) or a TorchScript
file, with its sidecar JSON, as a callable that behaves like the eager detector in eval mode.

``model([image float[3, H, W] in 0..1])`` returns ``[{"boxes", "labels", "scores", "masks"?}]``, so
:class:`~segtune.predict.Predictor` and the evaluator use an exported model exactly as they use a
checkpoint's. The sidecar (``<file>.json``) says what the file needs: class names, category ids,
thresholds, input sizes and normalisation, the segtune version that wrote it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtune.errors import CheckpointError
from segtune.version import __version__

#: File suffixes of the exported formats, and the format each names.
SUFFIXES = {".onnx": "onnx", ".torchscript": "torchscript"}
#: The version of the sidecar's layout; a sidecar of another one is refused with a clear error.
SIDECAR_VERSION = 1
OUTPUT_NAMES = ("boxes", "labels", "scores", "masks")


def exported_format(path: str | os.PathLike) -> str | None:
    """``onnx`` or ``torchscript`` for a file of an exported format (by its suffix), else None."""
    return SUFFIXES.get(Path(path).suffix.lower())


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}.json")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of exported file ``path``; a CheckpointError naming what is missing or wrong."""
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no sidecar {side.name} beside it; files written by `segtune export` come "
                              "with one (class names, thresholds, input sizes): export the model again") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{side}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("exported_by") != "segtune":
        raise CheckpointError(f"{side}: not a segtune export sidecar")
    if meta.get("sidecar_version") != SIDECAR_VERSION:
        raise CheckpointError(f"{side}: sidecar version {meta.get('sidecar_version')} (segtune "
                              f"{meta.get('segtune_version', '?')}); this segtune {__version__} reads version "
                              f"{SIDECAR_VERSION}: export the model again with this version")
    for key in ("classes", "format", "outputs"):
        if key not in meta:
            raise CheckpointError(f"{side}: lacks '{key}'")
    return meta


class InferenceOnly:
    """What the evaluator and the predictor ask of a model besides calling it, for a runner that is not an
    ``nn.Module`` (an exported file, an autocast wrapper): always in eval mode."""

    training = False

    def train(self, mode: bool = True) -> InferenceOnly:
        return self

    def eval(self) -> InferenceOnly:
        return self


class OnnxRuntimeModel(InferenceOnly):
    """An exported ONNX detector run by ONNX Runtime (the CUDA provider when present, else the CPU's)."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any], *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # a pinned dependency: only a broken install lands here
            raise CheckpointError(f"{path}: onnxruntime is not importable ({e})") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types for a bad file)
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:300]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = list(meta["outputs"])
        self.providers = self.session.get_providers()

    def to(self, device: Any) -> OnnxRuntimeModel:
        return self  # the session chose its provider when it was made

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:  # the file takes one image (batches above 1 do not export: pytorch/vision#2311)
            values = self.session.run(None, {self.input_name: image.detach().cpu().numpy().astype(np.float32)})
            out.append({name: torch.from_numpy(np.asarray(v)) for name, v in zip(self.outputs, values)})
        return out


class TorchScriptModel(InferenceOnly):
    """An exported TorchScript detector (``torch.jit.load``)."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any], *, device: Any = "cpu") -> None:
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


def load_exported(path: str | os.PathLike, *, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """The model in exported file ``path`` (chosen by its suffix) and its sidecar."""
    path = Path(path)
    fmt = exported_format(path)
    if fmt is None:
        raise CheckpointError(f"{path}: not an exported model (suffixes: {', '.join(SUFFIXES)})")
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    meta = read_sidecar(path)
    if meta["format"] != fmt:
        raise CheckpointError(f"{path}: its sidecar describes a {meta['format']} file, not {fmt}")
    model = OnnxRuntimeModel(path, meta) if fmt == "onnx" else TorchScriptModel(path, meta, device=device)
    return model, meta
