"""Owns the ONNX runtime: a detector written with ``torch.onnx.export`` and run by ONNX Runtime.

The file takes one image, ``float32[3, H, W]`` RGB in 0..1 of any size (batches above 1 do not export
upstream: pytorch/vision#2311). The dynamo exporter (``torch.onnx.export(dynamo=True)``) is tried first
when asked (``exporter="dynamo"`` or ``"auto"``); on torchvision's R-CNNs it fails inside
``batched_nms`` (pytorch/vision#9321), and the TorchScript-based exporter (``dynamo=False``, opset 17
by default, dynamic height and width) is used, with that reason in one line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtune.errors import CheckpointError, ExportError
from segtune.runtimes.base import ExportRequest, InferenceOnly, Runtime, register_runtime

logger = logging.getLogger(__name__)


def _root_cause(error: BaseException) -> str:
    """The innermost cause of an exporter's error, in one line (torch wraps the real one in several layers)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:240] if lines else ''}".rstrip(": ")


def _any_size() -> Any:
    """The dynamo exporter's dynamic shapes for one image of any height and width (without them it fixes the
    sample's size); None on a torch without ``Dim.DYNAMIC``, where the export is then checked on two sizes."""
    dynamic = getattr(torch.export.Dim, "DYNAMIC", None)
    return None if dynamic is None else ([{1: dynamic, 2: dynamic}],)


class OnnxRuntimeModel(InferenceOnly):
    """An exported ONNX detector run by ONNX Runtime (the CUDA provider when present, else the CPU's)."""

    def __init__(self, path: str | Path, meta: dict[str, Any], *, threads: int | None = None) -> None:
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

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:  # the file takes one image
            values = self.session.run(None, {self.input_name: image.detach().cpu().numpy().astype(np.float32)})
            out.append({name: torch.from_numpy(np.asarray(v)) for name, v in zip(self.outputs, values)})
        return out


class OnnxRuntime(Runtime):
    name = "onnx"
    suffix = ".onnx"
    description = "run by ONNX Runtime"

    def export(self, model: torch.nn.Module, sample: torch.Tensor, path: Path, request: ExportRequest) -> str:
        outputs, notes = request.outputs, request.notes
        if request.exporter in ("auto", "dynamo"):  # "legacy": straight to the TorchScript-based exporter
            chatter = io.StringIO()
            try:
                # The dynamo exporter prints its progress on stdout, and torch logs the failing graph on
                # stderr: both go to the debug log instead.
                with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                    warnings.simplefilter("ignore")
                    torch.onnx.export(model, ([sample],), str(path), dynamo=True, opset_version=max(request.opset, 18),
                                      input_names=["image"], output_names=outputs, dynamic_shapes=_any_size())
                return "dynamo"
            except Exception as e:  # noqa: BLE001  (any failure of the new exporter falls back to the old one)
                logger.debug("dynamo exporter said: %s", chatter.getvalue())
                reason = _root_cause(e)
                if request.exporter == "dynamo":
                    raise ExportError(f"the dynamo ONNX exporter fails on this model: {reason}") from None
                notes.append(f"dynamo exporter failed ({reason}); used the TorchScript-based one")
                logger.info("export: %s", notes[-1])
        axes = {"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in outputs}}
        if "masks" in outputs:
            axes["masks"] = {0: "detections", 2: "height", 3: "width"}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's warnings about Python values in torchvision's code
                torch.onnx.export(model, ([sample],), str(path), dynamo=False, opset_version=request.opset,
                                  input_names=["image"], output_names=outputs, dynamic_axes=axes,
                                  do_constant_folding=True)
        except torch.onnx.errors.UnsupportedOperatorError as e:
            raise ExportError(f"{type(model).__name__} does not export to ONNX: {e}") from None
        return "torchscript-onnx"

    def load(self, path: Path, meta: dict[str, Any], *, device: torch.device) -> Any:
        return OnnxRuntimeModel(path, meta)


ONNX = register_runtime(OnnxRuntime())
