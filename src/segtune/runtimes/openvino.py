"""Owns the OpenVINO runtime: a detector written as OpenVINO IR (``model.xml`` + ``model.bin``) and run by
OpenVINO's CPU plugin.

The IR is the ONNX file of the ONNX runtime (:mod:`segtune.runtimes.onnx`, written into a temporary
folder, its empty constants made explicit: :func:`explicit_empty_constants`) read by OpenVINO's ONNX
frontend (``Core.read_model``) and saved with ``openvino.save_model``, weights kept in float32
(``compress_to_fp16=False``: the file gives the checkpoint's detections; the CPU plugin picks its own
inference precision anyway). ``read_model`` rather than ``openvino.convert_model``: both read ONNX with
the same frontend, but ``convert_model`` also sends usage telemetry unless the user has opted out. Like
the ONNX file, the IR takes one image ``float32[3, H, W]`` of any height and width.

The inference precision is OpenVINO's choice for the CPU (``INFERENCE_PRECISION_HINT``: bf16 on CPUs with
AVX-512 BF16, which those with AMX have, f32 elsewhere) unless ``SEGTUNE_OPENVINO_PRECISION`` (``f32``,
``bf16`` or ``f16``) sets the hint; OpenVINO drops a hint for a type the CPU cannot run and runs f32
(:attr:`OpenVinoModel.precision` says what it runs). The plugin runs on as many threads as torch uses
(:mod:`segtune.threads`: the cores this process may use).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtune.errors import CheckpointError, ConfigError, ExportError
from segtune.runtimes.base import ExportRequest, InferenceOnly, Runtime, register_runtime
from segtune.runtimes.onnx import ONNX
from segtune.runtimes.openvino_core import openvino_module, shared_core, signal_stack_kept

#: The environment variable that sets the CPU plugin's INFERENCE_PRECISION_HINT (unset: OpenVINO's default).
PRECISION_ENV = "SEGTUNE_OPENVINO_PRECISION"
PRECISIONS = ("f32", "bf16", "f16")
#: What INT8 quantisation covers, largest first: the operations whose names start so (the ONNX exporter names them
#: by module). The backbone and FPN are most of a detector's time; the FPN alone is left in float when quantising
#: it too loses more AP than allowed.
INT8_SCOPES = {"the backbone and its FPN": ("/backbone/",), "the backbone without its FPN": ("/backbone/body/",)}
#: Why the rest stays in float (said in the log and the sidecar).
IN_FLOAT = ("the RPN, RoIAlign, NMS, the box and mask heads and the predictors sit in or after the If branches of "
            "torchvision's per-image steps, where NNCF 3.4's quantisation fails")


def _first_line(error: BaseException) -> str:
    """OpenVINO's error in one line: its last line (the lines above say where in OpenVINO's source it arose)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def explicit_empty_constants(graph: Any) -> int:
    """Replace each ONNX ``Constant`` holding an empty tensor, in ``graph`` (an ``onnx.GraphProto``) and its
    subgraphs, by a ``ConstantOfShape`` of its shape; returns how many.

    OpenVINO's ONNX frontend (2026.4.1) reads an empty ``Constant`` returned by an ``If`` branch as a tensor of
    one element: torchvision's ``batched_nms`` returns one (``torch.empty((0,))``) for an image without a
    candidate box, and the IR then answers such an image with one detection of uninitialised values instead of
    none. A ``ConstantOfShape`` of the same shape is read right.
    """
    from onnx import AttributeProto, helper, numpy_helper

    count, nodes = 0, []
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)):
                count += explicit_empty_constants(sub)
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is None or 0 not in value.dims:
            nodes.append(node)
            continue
        shape = f"{node.output[0]}__shape"
        dims = numpy_helper.from_array(np.array(value.dims, dtype=np.int64))
        nodes += [helper.make_node("Constant", [], [shape], value=dims),
                  helper.make_node("ConstantOfShape", [shape], list(node.output),
                                   value=helper.make_tensor("value", value.data_type, [1], [0]))]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def precision_hint(environ: dict[str, str] | None = None) -> str | None:
    """The inference precision asked for by :data:`PRECISION_ENV` (None: OpenVINO's default for the CPU)."""
    value = (os.environ if environ is None else environ).get(PRECISION_ENV, "").strip().lower()
    if not value:
        return None
    if value not in PRECISIONS:
        raise ConfigError(f"{PRECISION_ENV}={value}: choose one of {', '.join(PRECISIONS)} (or leave it unset for "
                          "OpenVINO's default)")
    return value


class OpenVinoModel(InferenceOnly):
    """An exported OpenVINO IR detector compiled for OpenVINO's CPU plugin.

    Attributes:
        precision: the inference precision the compiled model runs in (``f32``, ``bf16``, ...), as
            OpenVINO reports it.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any], *, precision: str | None = None) -> None:
        path = Path(path)
        ov = openvino_module(path)
        weights = path.with_suffix(".bin")
        if not weights.is_file():
            raise CheckpointError(f"{path}: its weights {weights.name} are missing beside it; an OpenVINO IR is "
                                  "two files (.xml + .bin): copy both, or export the model again")
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": torch.get_num_threads()}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            core = shared_core()  # one Core a process (see segtune.runtimes.openvino_core)
            self.compiled = core.compile_model(core.read_model(str(path), str(weights)), "CPU", config)
        except Exception as e:  # noqa: BLE001  (OpenVINO raises RuntimeError and its own types for a bad file)
            raise CheckpointError(f"{path}: OpenVINO cannot load it with {weights.name} ({_first_line(e)})") from None
        self.request = self.compiled.create_infer_request()
        self.outputs = list(meta["outputs"])
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:  # the file takes one image
            values = self.request.infer([image.detach().cpu().numpy().astype(np.float32)])
            # copies: the request reuses its output buffers on the next image
            out.append({name: torch.from_numpy(np.array(values[k])) for k, name in enumerate(self.outputs)})
        return out


class OpenVinoRuntime(Runtime):
    name = "openvino"
    suffix = ".xml"
    description = "OpenVINO IR, .xml + .bin, run by OpenVINO's CPU plugin"
    via = "onnx"

    def companions(self, path: Path) -> list[Path]:
        return [path.with_suffix(".bin")]

    def export(self, model: torch.nn.Module, sample: torch.Tensor, path: Path, request: ExportRequest) -> str:
        import onnx

        ov = openvino_module(path)
        with tempfile.TemporaryDirectory(prefix="segtune-openvino-") as tmp:
            onnx_file = Path(tmp) / "model.onnx"
            used = ONNX.export(model, sample, onnx_file, request)
            graph = onnx.load(str(onnx_file))
            if explicit_empty_constants(graph.graph):
                onnx.save(graph, str(onnx_file))
            try:
                ov.save_model(shared_core().read_model(str(onnx_file)), str(path), compress_to_fp16=False)
            except Exception as e:  # noqa: BLE001  (the ONNX frontend raises its own types)
                raise ExportError(f"OpenVINO cannot convert the model's ONNX file: {_first_line(e)}") from None
        return used  # the ONNX exporter that wrote the graph

    int8_scopes = tuple(INT8_SCOPES)

    def quantize(self, path: Path, out: Path, images: Iterable[torch.Tensor], count: int, scope: str) -> str:
        """NNCF's post-training quantisation of the operations of :data:`INT8_SCOPES` ``[scope]`` (the rest left out
        with an ignored scope): its mixed preset (activations asymmetric: the FPN's outputs are not ReLU's) and
        its fast bias correction (the full one refuses graphs with If operations)."""
        os.environ.setdefault("NNCF_CI", "1")  # read by NNCF at import: no usage telemetry sent from segtune's runs
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" when NNCF loads
        import nncf

        logging.getLogger("nncf").setLevel(logging.WARNING)  # one INFO line per operation it leaves out
        ov = openvino_module(path)
        prefixes = INT8_SCOPES[scope]
        model = shared_core().read_model(str(path), str(path.with_suffix(".bin")))
        if not any(op.get_friendly_name().startswith(prefixes) for op in model.get_ordered_ops()):
            raise ExportError(f"--int8: the model's graph has no operations named {' or '.join(prefixes)}... ("
                              f"{scope}), which is what segtune quantises; export it without --int8")
        inside = "|".join(re.escape(prefix) for prefix in prefixes)
        try:
            with signal_stack_kept():  # NNCF compiles with Cores of its own
                quantized = nncf.quantize(model, nncf.Dataset(images, lambda image: image.numpy()), subset_size=count,
                                          preset=nncf.QuantizationPreset.MIXED,
                                          ignored_scope=nncf.IgnoredScope(patterns=[f"^(?!{inside}).*"],
                                                                          validate=False))
            ov.save_model(quantized, str(out), compress_to_fp16=False)
        except Exception as e:  # noqa: BLE001  (NNCF and OpenVINO raise their own types)
            raise ExportError(f"--int8: NNCF could not quantise the model ({type(e).__name__}: "
                              f"{_first_line(e)})") from None
        fpn = "" if prefixes[0] == "/backbone/" else "the FPN (in INT8 it lost more AP than allowed), "
        return f"{scope} in INT8; in float: {fpn}{IN_FLOAT}"

    def load(self, path: Path, meta: dict[str, Any], *, device: torch.device) -> Any:
        return OpenVinoModel(path, meta, precision=precision_hint())

    def load_for_check(self, path: Path, meta: dict[str, Any]) -> Any:
        return OpenVinoModel(path, meta, precision="f32")  # the file's own float32, whatever the CPU's default


OPENVINO = register_runtime(OpenVinoRuntime())
