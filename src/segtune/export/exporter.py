"""Owns ``segtune export``: a checkpoint's model written by a registered runtime, with its sidecar, and checked.

The file takes one image, ``float32[3, H, W]`` RGB in 0..1 of any size, and returns ``boxes``,
``labels``, ``scores`` (and ``masks`` float[N, 1, H, W] pasted to the image's size, or keypoints) as the
eager model does: resizing and normalisation are inside it. What the model outputs, its inner score
threshold and what its format needs changed come from the model's family
(:func:`segtune.models.family_of`); how the file is written and run, from the runtime of the format
(:mod:`segtune.runtimes`). After writing, the file is loaded back and run beside the eager model on a
sample image; detections are compared as sets (:mod:`segtune.export.parity`).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segtune.errors import ConfigError
from segtune.export.int8 import Int8Gate, Int8Request, open_int8_data, quantize_checked
from segtune.export.parity import Parity, compare
from segtune.fileio import current_umask, write_json
from segtune.models import family_of
from segtune.models.family import OUTPUT_ORDER
from segtune.models.min_score import has_min_score, set_min_score
from segtune.run_files import best_checkpoint
from segtune.runtimes import (
    ExportRequest, LoadedModel, export_formats, export_runtime, open_model, sidecar_path,
)
from segtune.runtimes.base import SIDECAR_VERSION
from segtune.version import __version__

DEFAULT_OPSET = 17


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how its check went."""

    path: Path
    sidecar: Path
    format: str
    exporter: str            # e.g. "dynamo", "torchscript-onnx", "jit.script"
    seconds: float
    size_mb: float
    parity: Parity
    notes: list[str] = field(default_factory=list)
    int8: Int8Gate | None = None  # how the INT8 file compared with the float one (``--int8``)


def output_names(model: torch.nn.Module, answer: dict[str, Any]) -> list[str]:
    """What the file returns per image: what the model's family declares, and every other key the model
    answered with (so a model of an undeclared family keeps its masks), in :data:`OUTPUT_ORDER`."""
    names = set(family_of(model).outputs(model)) | set(answer)
    return [n for n in OUTPUT_ORDER if n in names] + sorted(names - set(OUTPUT_ORDER))


def _sidecar(loaded: LoadedModel, model: torch.nn.Module, fmt: str, outputs: list[str], exporter: str,
             opset: int | None) -> dict[str, Any]:
    family = family_of(model)
    # kept scores are >= it (inner_threshold sets the float32 just below: rounded back here)
    min_score = round(float(family.min_score(model) or 0.0), 6)
    ckpt, cfg = loaded.checkpoint or {}, loaded.config
    return {
        "exported_by": "segtune", "sidecar_version": SIDECAR_VERSION, "segtune_version": __version__,
        "format": fmt, "exporter": exporter, "opset": opset, "torch_version": torch.__version__,
        "model": cfg.model.name if cfg is not None else type(model).__name__, "checkpoint": str(loaded.path),
        "classes": list(loaded.classes), "category_ids": list(loaded.category_ids),
        "keypoint_names": ckpt.get("keypoint_names"), "skeleton": ckpt.get("skeleton"),
        "score_threshold": max(0.5, min_score), "min_score": min_score,
        "mask_threshold": float(loaded.mask_threshold),
        "input": {"name": "image", "layout": "float32[3, H, W], RGB, values 0..1, one image of any size",
                  "min_size": [], "max_size": None, "image_mean": [], "image_std": [], **family.input_spec(model),
                  "note": "resizing and normalisation are inside the model"},
        "outputs": outputs,
    }


def _other_size_problems(exported: Any, image: torch.Tensor, reference: dict[str, Any]) -> list[str]:
    """What differs when the file runs on ``image`` (another size than the sample's), as parity problems."""
    size = "x".join(str(n) for n in image.shape[1:])
    try:
        other = compare(reference, exported([image])[0], score_threshold=0.0)
    except Exception as e:  # noqa: BLE001  (a runtime's own error type: a file fixed to the sample's size)
        return [f"fails on a {size} image ({type(e).__name__}: {str(e).splitlines()[0][:200]})"]
    return [f"on a {size} image: {p}" for p in other.problems]


def default_output(checkpoint: Path, fmt: str) -> Path:
    """``weights/best.onnx`` beside ``weights/best.pt`` (a run folder: its best checkpoint's)."""
    ckpt = best_checkpoint(checkpoint) if checkpoint.is_dir() else checkpoint
    return ckpt.with_suffix(export_runtime(fmt).suffix)


def _check_output(path: Path, fmt: str) -> None:
    suffix = export_runtime(fmt).suffix
    if path.suffix.lower() != suffix:
        raise ConfigError(f"{path}: a {fmt} file must end in {suffix} (the suffix picks the backend)")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: its folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"{path}: its folder {path.parent} cannot be written")


def export_model(checkpoint: str | os.PathLike, fmt: str = "onnx", *, out: str | os.PathLike | None = None,
                 opset: int = DEFAULT_OPSET, exporter: str = "auto", score_threshold: float | None = None,
                 sample_size: tuple[int, int] = (320, 480), int8: Int8Request | None = None) -> ExportResult:
    """Export the model of ``checkpoint`` (a ``.pt`` file or a run folder) and check the file against it.

    ``fmt``: a registered runtime that exports (``onnx``, ``torchscript``, or a plug-in's).
    ``score_threshold``: the file itself drops detections scoring below it, before its mask head and the
    pasting of masks (faster prediction); None keeps the model's own (0.05 for torchvision's detectors),
    which is what COCO evaluation of the file needs. The sidecar records it as ``min_score``.
    ``int8``: quantise the checked file to INT8 and keep it only if its AP passes the gate
    (:mod:`segtune.export.int8`; runtimes with ``int8_scopes``).
    """
    export_runtime(fmt)  # an unknown format is refused before the checkpoint is read
    path = Path(out) if out else default_output(Path(checkpoint), fmt)
    _check_output(path, fmt)
    return export_loaded(open_model(checkpoint), fmt, out=path, opset=opset, exporter=exporter,
                         score_threshold=score_threshold, sample_size=sample_size, int8=int8)


def export_loaded(loaded: LoadedModel, fmt: str, *, out: str | os.PathLike, opset: int = DEFAULT_OPSET,
                  exporter: str = "auto", score_threshold: float | None = None,
                  sample_size: tuple[int, int] = (320, 480), int8: Int8Request | None = None) -> ExportResult:
    """:func:`export_model` of a checkpoint already opened (:func:`~segtune.runtimes.open_model`): the export
    works on a copy of its model, so one opened checkpoint serves several exports."""
    runtime = export_runtime(fmt)
    if score_threshold is not None and not 0.0 <= score_threshold < 1.0:
        raise ConfigError(f"--score-threshold {score_threshold}: must be in [0, 1)")
    if loaded.exported:
        raise ConfigError(f"{loaded.path}: already an exported file; export the checkpoint it came from")
    path = Path(out)
    _check_output(path, fmt)
    model = copy.deepcopy(loaded.model).eval()
    name = loaded.config.model.name if loaded.config is not None else type(model).__name__
    if score_threshold is not None:
        if not has_min_score(model):
            raise ConfigError(f"{name}: has no score threshold inside it to set")
        set_min_score(model, score_threshold)
    family = family_of(model)
    if int8 is not None and not runtime.int8_scopes:
        raise ConfigError(f"--int8: not available for the {fmt} format; choose one of "
                          f"{', '.join(n for n in export_formats() if export_runtime(n).int8_scopes)}")
    # the data --int8 needs, opened before anything is written (moved data, no test split: refused now)
    int8_data = open_int8_data(loaded, int8, family.input_spec(model)) if int8 is not None else None
    family.ready_for_export(model, runtime.graph_format)  # OpenVINO's IR is converted from the ONNX file
    generator = torch.Generator().manual_seed(0)
    sample = torch.rand(3, *sample_size, generator=generator)
    # A second image of another shape: a file that took the sample's size as fixed fails on it.
    other = torch.rand(3, sample_size[1], sample_size[0] + 32, generator=generator)
    with torch.inference_mode():
        reference, other_reference = model([sample])[0], model([other])[0]
    request = ExportRequest(outputs=output_names(model, reference), opset=opset, exporter=exporter)
    if runtime.graph_format == "onnx" and exporter == "auto" and not family.dynamo_onnx:
        request.exporter = "legacy"
        request.notes.append(f"the TorchScript-based exporter (torch's dynamo exporter does not handle {family.name} "
                             f"models)")
    start = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # The files the file needs beside it (OpenVINO's .bin), the file, its sidecar: written under temporary
    # names, renamed in that order only after the check, every one removed if anything fails.
    moves = [*zip(runtime.companions(tmp), runtime.companions(path)), (tmp, path),
             (sidecar_path(tmp), sidecar_path(path))]
    try:
        used = runtime.export(model, sample, tmp, request)
        meta = _sidecar(loaded, model, fmt, request.outputs, used,
                        opset if runtime.graph_format == "onnx" else None)
        write_json(sidecar_path(tmp), meta)
        exported = runtime.load_for_check(tmp, meta)
        with torch.inference_mode():
            parity = compare(reference, exported([sample])[0], score_threshold=0.0)
            parity.problems += _other_size_problems(exported, other, other_reference)
        gate = None
        if int8_data is not None and not parity.ok:
            request.notes.append("--int8 not attempted: the float file failed its check against the checkpoint")
        elif int8_data is not None:
            gate = quantize_checked(runtime, tmp, meta, loaded, *int8_data, int8)
            write_json(sidecar_path(tmp), {**meta, "precision": "int8", "int8": gate.as_json()})
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
        for written, final in moves:
            os.replace(written, final)
    finally:
        for written, _ in moves:
            written.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    size_mb = sum(final.stat().st_size for _, final in moves[:-1]) / 2**20  # the file and its companions
    return ExportResult(path=path, sidecar=sidecar_path(path), format=fmt, exporter=used, seconds=seconds,
                        size_mb=size_mb, parity=parity, notes=request.notes, int8=gate)


