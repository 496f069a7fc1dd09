"""Owns ``segtune export``: a checkpoint's model written as ONNX or TorchScript, with its sidecar, and checked.

The file takes one image, ``float32[3, H, W]`` RGB in 0..1 of any size, and returns ``boxes``,
``labels``, ``scores`` (and ``masks`` float[N, 1, H, W] pasted to the image's size) as the eager
model does: resizing and normalisation are inside it. Batches above 1 do not export upstream
(pytorch/vision#2311). ONNX: the dynamo exporter (``torch.onnx.export(dynamo=True)``) is tried first
when asked (``exporter="dynamo"`` or ``"auto"``); on torchvision's R-CNNs it fails inside
``batched_nms`` (pytorch/vision#9321), and the TorchScript-based exporter (``dynamo=False``, opset
17 by default, dynamic height and width) is used, with that reason in one line. TorchScript:
``torch.jit.script``. After writing, the file is loaded back and run beside the eager model on a
sample image; detections are compared as sets (:mod:`segtune.export.parity`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from segtune.checkpoint import load_checkpoint
from segtune.errors import CheckpointError, ConfigError
from segtune.export.parity import Parity, compare
from segtune.fileio import current_umask, write_json
from segtune.models import model_from_checkpoint
from segtune.models.exported import OUTPUT_NAMES, SIDECAR_VERSION, SUFFIXES, load_exported, sidecar_path
from segtune.models.min_score import has_min_score, inner_threshold
from segtune.version import __version__

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how its check went."""

    path: Path
    sidecar: Path
    format: str
    exporter: str            # "dynamo", "torchscript-onnx" or "jit.script"
    seconds: float
    size_mb: float
    parity: Parity
    notes: list[str] = field(default_factory=list)


def _outputs(model: torch.nn.Module) -> list[str]:
    roi_heads = getattr(model, "roi_heads", None)
    masks = bool(roi_heads is not None and getattr(roi_heads, "has_mask", lambda: False)())
    if roi_heads is not None and getattr(roi_heads, "has_keypoint", lambda: False)():
        return ["boxes", "labels", "scores", "keypoints", "keypoints_scores"]
    return list(OUTPUT_NAMES) if masks else list(OUTPUT_NAMES[:3])


def _sidecar(ckpt: dict[str, Any], cfg: Any, model: torch.nn.Module, fmt: str, outputs: list[str],
             exporter: str, opset: int | None) -> dict[str, Any]:
    transform = getattr(model, "transform", None)
    # kept scores are >= it (inner_threshold sets the float32 just below: rounded back here)
    min_score = round(float(getattr(getattr(model, "roi_heads", None), "score_thresh", 0.0)), 6)
    return {
        "exported_by": "segtune", "sidecar_version": SIDECAR_VERSION, "segtune_version": __version__,
        "format": fmt, "exporter": exporter, "opset": opset, "torch_version": torch.__version__,
        "model": cfg.model.name, "checkpoint": str(ckpt.get("path", "")),
        "classes": list(ckpt["classes"]), "category_ids": list(ckpt.get("category_ids") or
                                                             range(1, len(ckpt["classes"]) + 1)),
        "keypoint_names": ckpt.get("keypoint_names"), "skeleton": ckpt.get("skeleton"),
        "score_threshold": max(0.5, min_score), "min_score": min_score,
        "mask_threshold": float(cfg.eval.mask_threshold),
        "input": {"name": "image", "layout": "float32[3, H, W], RGB, values 0..1, one image of any size",
                  "min_size": list(getattr(transform, "min_size", ()) or ()),
                  "max_size": getattr(transform, "max_size", None),
                  "image_mean": list(getattr(transform, "image_mean", ()) or ()),
                  "image_std": list(getattr(transform, "image_std", ()) or ()),
                  "note": "resizing and normalisation are inside the model"},
        "outputs": outputs,
    }


def _root_cause(error: BaseException) -> str:
    """The innermost cause of an exporter's error, in one line (torch wraps the real one in several layers)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:240] if lines else ''}".rstrip(": ")


def _export_onnx(model: torch.nn.Module, sample: torch.Tensor, path: Path, outputs: list[str], opset: int,
                 exporter: str, notes: list[str]) -> str:
    if exporter in ("auto", "dynamo"):  # "legacy": straight to the TorchScript-based exporter
        try:
            # The dynamo exporter prints its progress on stdout, and torch logs the failing graph on stderr:
            # both go to the debug log instead.
            chatter = io.StringIO()
            with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, ([sample],), str(path), dynamo=True, opset_version=max(opset, 18),
                                  input_names=["image"], output_names=outputs,
                                  dynamic_shapes=None)
            return "dynamo"
        except Exception as e:  # noqa: BLE001  (any failure of the new exporter falls back to the old one)
            logger.debug("dynamo exporter said: %s", chatter.getvalue())
            reason = _root_cause(e)
            if exporter == "dynamo":
                raise CheckpointError(f"the dynamo ONNX exporter fails on this model: {reason}") from None
            notes.append(f"dynamo exporter failed ({reason}); used the TorchScript-based one")
            logger.info("export: %s", notes[-1])
    axes = {"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in outputs}}
    if "masks" in outputs:
        axes["masks"] = {0: "detections", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values in torchvision's code
        torch.onnx.export(model, ([sample],), str(path), dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
    return "torchscript-onnx"


class _EvalResizeInDouble(GeneralizedRCNNTransform):
    """torchvision's transform, resizing as the eager model does when scripted.

    Scripted, torchvision computes the resize scale in float32 (eager: in Python's double), so on some
    image sizes the input comes out a pixel smaller (143 x 0.67132866 = 95.99 -> 95 instead of 96) and
    the detections differ from eager's. Here the scale is computed from Python numbers, which
    TorchScript keeps in double. Inference only: the exported file never trains.
    """

    def resize(self, image: Tensor, target: Optional[dict[str, Tensor]] = None
               ) -> tuple[Tensor, Optional[dict[str, Tensor]]]:
        h, w = image.shape[-2], image.shape[-1]
        scale = min(float(self.min_size[-1]) / float(min(h, w)), float(self.max_size) / float(max(h, w)))
        image = F.interpolate(image[None], size=None, scale_factor=scale, mode="bilinear",
                              recompute_scale_factor=True, align_corners=False)[0]
        return image, target


def _export_torchscript(model: torch.nn.Module, path: Path) -> str:
    transform = getattr(model, "transform", None)
    if type(transform) is GeneralizedRCNNTransform and transform.fixed_size is None:
        transform.__class__ = _EvalResizeInDouble  # on this copy of the model only (built for the export)
    try:
        scripted = torch.jit.script(model)
    except Exception as e:  # noqa: BLE001  (the scripting compiler raises many types)
        first = str(e).strip().splitlines()
        raise CheckpointError(f"this model does not export as TorchScript: {first[0][:300] if first else e}") from None
    scripted.save(str(path))
    return "jit.script"


def default_output(checkpoint: Path, fmt: str) -> Path:
    """``weights/best.onnx`` beside ``weights/best.pt`` (a run folder: its best checkpoint's)."""
    suffix = next(s for s, f in SUFFIXES.items() if f == fmt)
    ckpt = checkpoint / "weights" / "best.pt" if checkpoint.is_dir() else checkpoint
    return ckpt.with_suffix(suffix)


def export_model(checkpoint: str | os.PathLike, fmt: str = "onnx", *, out: str | os.PathLike | None = None,
                 opset: int = DEFAULT_OPSET, exporter: str = "auto", score_threshold: float | None = None,
                 sample_size: tuple[int, int] = (320, 480)) -> ExportResult:
    """Export the model of ``checkpoint`` (a ``.pt`` file or a run folder) and check the file against it.

    ``score_threshold``: the file itself drops detections scoring below it, before its mask head and the
    pasting of masks (faster prediction); None keeps the model's own (0.05 for torchvision's detectors),
    which is what COCO evaluation of the file needs. The sidecar records it as ``min_score``.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if score_threshold is not None and not 0.0 <= score_threshold < 1.0:
        raise ConfigError(f"--score-threshold {score_threshold}: must be in [0, 1)")
    path = Path(out) if out else default_output(Path(checkpoint), fmt)
    if path.suffix.lower() not in SUFFIXES or SUFFIXES[path.suffix.lower()] != fmt:
        raise ConfigError(f"{path}: a {fmt} file must end in "
                          f"{next(s for s, f in SUFFIXES.items() if f == fmt)} (the suffix picks the backend)")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: its folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"{path}: its folder {path.parent} cannot be written")
    ckpt = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ckpt)
    model = model.eval()
    if score_threshold is not None:
        if not has_min_score(model):
            raise ConfigError(f"{cfg.model.name}: has no score threshold inside it to set (no roi_heads.score_thresh)")
        model.roi_heads.score_thresh = inner_threshold(score_threshold)
    outputs = _outputs(model)
    generator = torch.Generator().manual_seed(0)
    sample = torch.rand(3, *sample_size, generator=generator)
    notes: list[str] = []
    start = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "onnx":
            used = _export_onnx(model, sample, tmp, outputs, opset, exporter, notes)
        else:
            used = _export_torchscript(model, tmp)
        meta = _sidecar(ckpt, cfg, model, fmt, outputs, used, opset if fmt == "onnx" else None)
        write_json(sidecar_path(tmp), meta)
        exported, _ = load_exported(tmp)
        with torch.inference_mode():
            reference = model([sample])[0]
            got = exported([sample])[0]
        parity = compare(reference, got, score_threshold=0.0)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
        os.replace(sidecar_path(tmp), sidecar_path(path))
    except torch.onnx.errors.UnsupportedOperatorError as e:
        raise CheckpointError(f"{cfg.model.name} does not export to ONNX: {e}") from None
    finally:
        for leftover in (tmp, sidecar_path(tmp)):
            leftover.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return ExportResult(path=path, sidecar=sidecar_path(path), format=fmt, exporter=used, seconds=seconds,
                        size_mb=path.stat().st_size / 2**20, parity=parity, notes=notes)
