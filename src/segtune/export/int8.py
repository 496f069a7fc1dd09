"""Owns ``segtune export --int8``: an exported file quantised to INT8 by its runtime (OpenVINO: NNCF's
post-training quantisation), calibrated on the run's own training images, and kept only when its COCO AP on
the run's test split stays within ``max_ap_drop`` of the float file's, for bbox and for segm each.

The float file is written and checked against the checkpoint first (:mod:`segtune.export.exporter`); then
:func:`quantize_checked` writes the INT8 file under temporary names, scores both files on the test split
and either puts the INT8 file in the float file's place or removes it and raises, so a refused file leaves
nothing behind. The measured APs and drops go into the sidecar.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms.v2 import functional as F

from segtune.data import build_dataset
from segtune.errors import CheckpointError, ConfigError, DatasetError, ExportError
from segtune.evaluation.evaluator import evaluate_model
from segtune.runtimes import LoadedModel
from segtune.runtimes.base import Runtime

logger = logging.getLogger(__name__)

DEFAULT_MAX_AP_DROP = 0.01
#: At most this many training images calibrate the quantisation (NNCF's own default subset size).
DEFAULT_CALIBRATION_IMAGES = 300


@dataclass
class Int8Request:
    """What ``--int8`` is asked for.

    Attributes:
        max_ap_drop: the INT8 file is refused when its bbox or segm AP is more than this below the float file's.
        calibration_images: at most this many training images (evenly spread over the split) calibrate it.
        data: the data set folder, when it moved since training (default: the run's).
    """

    max_ap_drop: float = DEFAULT_MAX_AP_DROP
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    data: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_ap_drop <= 1.0:
            raise ConfigError(f"--max-ap-drop {self.max_ap_drop}: must be in [0, 1]")
        if self.calibration_images < 1:
            raise ConfigError(f"--calibration-images {self.calibration_images}: must be at least 1")


@dataclass
class Int8Gate:
    """How an INT8 file compared with the float file on the run's test split (AP at IoU 0.50:0.95).

    Attributes:
        scope: what was quantised (one of the runtime's ``int8_scopes``); ``kept_in_float`` what was not, and why.
        tried: the gates of the larger scopes tried before this one, which lost too much AP.
    """

    max_ap_drop: float
    calibration_images: int
    test_images: int
    float_ap: dict[str, float]
    int8_ap: dict[str, float]
    scope: str = ""
    kept_in_float: str = ""
    tried: list[Int8Gate] = field(default_factory=list)

    @property
    def drop(self) -> dict[str, float]:
        return {kind: round(self.float_ap[kind] - self.int8_ap.get(kind, 0.0), 4) for kind in self.float_ap}

    @property
    def passed(self) -> bool:
        return all(drop <= self.max_ap_drop + 1e-9 for drop in self.drop.values())

    def summary(self) -> str:
        return f"{self.scope} in INT8: " + ", ".join(
            f"{kind} AP {self.float_ap[kind]:.3f} float -> {self.int8_ap.get(kind, 0.0):.3f} int8 "
            f"(drop {self.drop[kind]:+.3f})" for kind in self.float_ap)

    def as_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "max_ap_drop": self.max_ap_drop, "calibration_images": self.calibration_images,
                "test_images": self.test_images, "float_ap": self.float_ap, "int8_ap": self.int8_ap,
                "ap_drop": self.drop, "kept_in_float": self.kept_in_float,
                "tried_first": [{"scope": g.scope, "int8_ap": g.int8_ap, "ap_drop": g.drop} for g in self.tried]}


class CalibrationImages:
    """Training images as the exported file takes them (``float32[3, H, W]`` in 0..1), decoded one at a time
    when iterated (NNCF goes over them more than once), each shrunk first to the scale the model's own resize
    would give it (``min_size`` / ``max_size`` of the sidecar), so a set of large photos needs no more memory
    or time than the model sees."""

    def __init__(self, dataset: Any, count: int, input_spec: dict[str, Any]) -> None:
        self.dataset = dataset
        step = len(dataset) / min(count, len(dataset))
        self.indices = [int(k * step) for k in range(min(count, len(dataset)))]
        sizes = input_spec.get("min_size") or []
        self.min_size = min(sizes) if isinstance(sizes, list) and sizes else sizes or None
        self.max_size = input_spec.get("max_size")

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for index in self.indices:
            image = torch.from_numpy(self.dataset.read_image(index)).permute(2, 0, 1)
            height, width = image.shape[1:]
            scale = 1.0
            if self.min_size:
                scale = self.min_size / min(height, width)
            if self.max_size:
                scale = min(scale, self.max_size / max(height, width))
            if scale < 1.0:
                size = [max(1, round(height * scale)), max(1, round(width * scale))]
                image = F.resize(image, size, antialias=True)
            yield image.float().div_(255.0)


def _split(loaded: LoadedModel, split: str, data: str | None) -> Any:
    try:
        data_cfg, files = loaded.split_data(split, data)
        if files is not None and not files:
            raise DatasetError(f"{loaded.path}: its run has no {split} images, which --int8 needs ("
                              + ("to calibrate on" if split == "train" else "to measure the AP drop on") + ")")
        return build_dataset(data_cfg, files=files, train=False)
    except (CheckpointError, DatasetError) as e:
        raise DatasetError(f"--int8 reads the run's {split} images and cannot: {e}; give --data FOLDER where the data "
                           "set is now") from None


def open_int8_data(loaded: LoadedModel, request: Int8Request, input_spec: dict[str, Any]) -> tuple[Any, Any]:
    """``(calibration images, test data set)`` of the run ``loaded`` comes from; a DatasetError naming what is
    missing (moved data, a run without a test split) before anything is written."""
    train, test = _split(loaded, "train", request.data), _split(loaded, "test", request.data)
    calibration = CalibrationImages(train, request.calibration_images, input_spec)
    logger.info("int8: calibrating on %d of the %d training images of %s; the AP gate runs on the %d test images",
                len(calibration), len(train), train.root, len(test))
    return calibration, test


def _ap(model: Any, test: Any, loaded: LoadedModel) -> dict[str, float]:
    evaluation_log = logging.getLogger("segtune.evaluation.evaluator")
    level = evaluation_log.level
    evaluation_log.setLevel(logging.WARNING)  # two COCO summaries of 12 lines each: the gate's line says enough
    try:
        report = evaluate_model(model, test, loaded.classes, device=torch.device("cpu"),
                                mask_threshold=loaded.mask_threshold)
    finally:
        evaluation_log.setLevel(level)
    return {kind: round(float(values["AP"]), 4) for kind, values in report.metrics.items()
            if kind in ("bbox", "segm") and float(values["AP"]) >= 0.0}


def quantize_checked(runtime: Runtime, path: Path, meta: dict[str, Any], loaded: LoadedModel, calibration: Any,
                     test: Any, request: Int8Request) -> Int8Gate:
    """Quantise the float file at ``path`` (its sidecar ``meta``) over the runtime's ``int8_scopes``, largest first,
    scoring each INT8 file beside the float one, and put the first that passes the gate in its place; when none
    passes, remove them and raise an ExportError with every figure."""
    logger.info("int8: scoring the float file on %d test images", len(test))
    float_ap = _ap(runtime.load_for_check(path, meta), test, loaded)
    if not float_ap:
        raise ExportError(f"--int8: the test split of {loaded.path} has no objects to measure AP on")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.int8.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    out = Path(name)
    written = [out, *runtime.companions(out)]
    tried: list[Int8Gate] = []
    try:
        for scope in runtime.int8_scopes:
            logger.info("int8: quantising %s, then scoring it on the %d test images", scope, len(test))
            kept = runtime.quantize(path, out, calibration, len(calibration), scope)
            gate = Int8Gate(max_ap_drop=request.max_ap_drop, calibration_images=len(calibration), test_images=len(test),
                            float_ap=float_ap, int8_ap=_ap(runtime.load_for_check(out, meta), test, loaded),
                            scope=scope, kept_in_float=kept, tried=list(tried))
            logger.info("int8: %s", gate.summary())
            if gate.passed:
                logger.info("int8: %s", kept)
                os.chmod(out, os.stat(path).st_mode & 0o777)
                for source, target in zip(written, [path, *runtime.companions(path)]):
                    os.replace(source, target)
                return gate
            tried.append(gate)
        raise ExportError(f"--int8 refused: {'; '.join(g.summary() for g in tried)}, on the {len(test)} test images: "
                          f"more than --max-ap-drop {request.max_ap_drop:g}. Nothing was written: export without "
                          "--int8, or allow a larger drop")
    finally:
        for file in written:
            file.unlink(missing_ok=True)
