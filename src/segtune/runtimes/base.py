"""Owns what an inference runtime is (one per format: eager, TorchScript, ONNX Runtime, ...), their
registry, and the sidecar JSON that every exported file carries.

A runtime is one module that subclasses :class:`Runtime` and registers an instance with
:func:`register_runtime`: its name (``segtune export --format NAME``), its file suffix, how it writes
a model (:meth:`Runtime.export`) and how it runs such a file (:meth:`Runtime.load`, a callable that
answers as the eager detector does in eval mode). ``export``, ``predict``, ``evaluate``,
``benchmark`` and :class:`~segtune.predict.Predictor` go through the registry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segtune.errors import CheckpointError, ConfigError
from segtune.registry import Registry
from segtune.version import __version__

#: The version of the sidecar's layout; a sidecar of another one is refused with a clear error.
SIDECAR_VERSION = 1


@dataclass
class ExportRequest:
    """What an export is asked for, beside the model, a sample image and the file to write.

    Attributes:
        outputs: the names of the model's outputs per image, in order (``boxes``, ``labels``, ...).
        opset: the ONNX opset (runtimes that write ONNX).
        exporter: which exporter a runtime with several should use (ONNX: auto | dynamo | legacy).
        notes: lines the runtime adds for the user (e.g. a fallback it took).
    """

    outputs: list[str]
    opset: int = 17
    exporter: str = "auto"
    notes: list[str] = field(default_factory=list)


class InferenceOnly:
    """What the evaluator and the predictor ask of a model besides calling it, for a runner that is not an
    ``nn.Module`` (an exported file, an autocast wrapper): always in eval mode."""

    training = False

    def train(self, mode: bool = True) -> InferenceOnly:
        return self

    def eval(self) -> InferenceOnly:
        return self

    def to(self, device: Any) -> InferenceOnly:
        return self


class Runtime:
    """One way to run a trained model; subclass it in a module of its own and register an instance.

    Attributes:
        name: the format's name (``onnx``); also the row of ``segtune benchmark``.
        suffix: the suffix of its files (``.onnx``); None for the eager model of a checkpoint.
        description: one line for help texts.
        exports: whether ``segtune export`` writes this format (the eager runtime reads checkpoints only).
        via: the format this one is converted from (OpenVINO: ``onnx``), whose readying of the model
            (the family's ``ready_for_export``), exporter choice and opset it shares; empty: none.
        int8_scopes: what :meth:`quantize` can quantise to INT8 (``segtune export --int8``), largest part first:
            the next is tried when the last one loses too much AP; empty: no INT8.
    """

    name = ""
    suffix: str | None = None
    description = ""
    exports = True
    via = ""
    int8_scopes: tuple[str, ...] = ()

    @property
    def graph_format(self) -> str:
        """The format the model is written as first: :attr:`via`, else the runtime's own name."""
        return self.via or self.name

    def companions(self, path: Path) -> list[Path]:
        """The other files a file at ``path`` needs beside it (OpenVINO's ``.bin``): written, moved and removed
        with it; none by default."""
        return []

    def export(self, model: torch.nn.Module, sample: torch.Tensor, path: Path, request: ExportRequest) -> str:
        """Write ``model`` (in eval mode; a copy the runtime may change) to ``path``; return the exporter used."""
        raise NotImplementedError

    def load(self, path: Path, meta: dict[str, Any], *, device: torch.device) -> Any:
        """The model in file ``path`` (its sidecar ``meta``) as a callable: ``[float[3, H, W]] -> [dict]``."""
        raise NotImplementedError

    def quantize(self, path: Path, out: Path, images: Iterable[torch.Tensor], count: int, scope: str) -> str:
        """Write a version of the file at ``path`` with ``scope`` (one of :attr:`int8_scopes`) in INT8 to ``out``
        (and its companions), calibrated on ``images`` (``count`` of them, ``float32[3, H, W]``, iterable more
        than once); return what stays in float and why, in one sentence."""
        raise ConfigError(f"--int8: not available for the {self.name} format")

    def load_for_check(self, path: Path, meta: dict[str, Any]) -> Any:
        """The file at ``path`` as :meth:`load` runs it on the CPU, but in the number format it was written in,
        for the export's parity check: no reduced precision the runtime would pick by itself (OpenVINO's
        bf16 on CPUs with AMX)."""
        return self.load(path, meta, device=torch.device("cpu"))


RUNTIMES: Registry[Runtime] = Registry("runtime")


def register_runtime(runtime: Runtime) -> Runtime:
    """Add ``runtime`` to :data:`RUNTIMES` under its name (a duplicate name or suffix is an error)."""
    if runtime.suffix and any(r.suffix == runtime.suffix for r in RUNTIMES.values()):
        raise ValueError(f"runtime suffix {runtime.suffix} is already registered")
    RUNTIMES.register(runtime.name)(runtime)
    return runtime


def export_formats() -> list[str]:
    """The names of the runtimes ``segtune export`` writes, in registration order."""
    return [runtime.name for runtime in RUNTIMES.values() if runtime.exports]


def runtime_for_suffix(path: str | os.PathLike) -> Runtime | None:
    """The runtime whose files end like ``path`` (``.onnx``), else None (a checkpoint or a run folder)."""
    suffix = Path(path).suffix.lower()
    for runtime in RUNTIMES.values():
        if runtime.suffix and runtime.suffix == suffix:
            return runtime
    return None


def export_runtime(fmt: str) -> Runtime:
    """The runtime that writes format ``fmt``; ConfigError listing the formats otherwise."""
    if fmt not in RUNTIMES or not RUNTIMES.get(fmt).exports:
        raise ConfigError(f"export format {fmt!r}: choose one of {', '.join(export_formats())}")
    return RUNTIMES.get(fmt)


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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
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
