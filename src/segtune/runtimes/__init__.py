"""Inference runtimes: one module per format (eager, ONNX Runtime, TorchScript, OpenVINO), registered in
:data:`RUNTIMES`, and :func:`open_model`, which opens a checkpoint or an exported file once per command.

Sits above ``segtune.models`` (the eager runtime rebuilds a checkpoint's model) and below evaluation,
prediction and export, which all go through it. A new runtime is one module with a :class:`Runtime`
subclass and its :func:`register_runtime` line, imported here.
"""

from segtune.runtimes.base import (
    RUNTIMES, ExportRequest, InferenceOnly, Runtime, export_formats, export_runtime, read_sidecar, register_runtime,
    runtime_for_suffix, sidecar_path,
)
# Each registers its runtime; the order is benchmark's row order and export's list of formats.
from segtune.runtimes import eager, torchscript, onnx, openvino  # noqa: F401,E402,I001
from segtune.runtimes.loaded import LoadedModel, open_model

__all__ = [
    "RUNTIMES", "ExportRequest", "InferenceOnly", "LoadedModel", "Runtime", "export_formats", "export_runtime",
    "open_model", "read_sidecar", "register_runtime", "runtime_for_suffix", "sidecar_path",
]
