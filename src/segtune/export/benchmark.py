"""Owns ``segtune benchmark RUN``: every way to run a trained model, side by side on its test split.

Rows: eager fp32, eager bf16 (channels-last + CPU autocast; only where the CPU runs bfloat16 natively), then
every registered runtime that exports -- TorchScript, ONNX Runtime, OpenVINO, a plug-in's -- each exported
from the one opened checkpoint and checked by :func:`segtune.export.export_loaded` first. Columns:
status (ok, parity passed, or failed and why), file size, bbox and segm AP on the whole test split
from that path, and the median milliseconds per image at batch 1 (after two warm-up images) with
images per second, at evaluation settings (every detection the model keeps, its masks pasted at
image size: what the AP needs) and at prediction settings (``predict_threshold``, predict's default
0.5, applied inside the model: eager through :func:`segtune.models.min_score.min_score_inside`, the
files exported again with ``score_threshold``). One Markdown table, also written as
``benchmark.json`` in the run folder.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segtune.data import build_dataset
from segtune.errors import SegtuneError
from segtune.evaluation import dataset_ground_truth, evaluate_model
from segtune.export.exporter import default_output, export_loaded
from segtune.export.int8 import Int8Request
from segtune.fileio import write_json
from segtune.models.min_score import min_score_inside
from segtune.models.precision import autocast, float_outputs, inference_precision
from segtune.machine import cpu_has_native_bf16, cpu_name
from segtune.runtimes import InferenceOnly, LoadedModel, export_formats, export_runtime, open_model
from segtune.threads import configure_threads, describe_threads

logger = logging.getLogger(__name__)

BENCHMARK_JSON = "benchmark.json"
WARMUP = 2
CPU = torch.device("cpu")


@dataclass
class BenchmarkRow:
    path: str
    status: str
    size_mb: float | None = None
    bbox_ap: float | None = None
    segm_ap: float | None = None
    ms_per_image: float | None = None
    images_per_s: float | None = None
    predict_ms_per_image: float | None = None   # at prediction settings (score >= predict_threshold)
    predict_images_per_s: float | None = None


class _Bf16(InferenceOnly):
    """A copy of the eager model in channels-last memory format under CPU autocast to bfloat16, answering in
    float32 as the other paths do (channels-last alone gains little in fp32; with bf16 it doubles the gain)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = copy.deepcopy(model)
        self.dtype = inference_precision(self.model, "bf16", CPU)  # what `segtune predict --amp bf16` runs

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with autocast(CPU, self.dtype):
            return float_outputs(self.model(images))


def _time(runner: Any, images: list[torch.Tensor], min_score: float = 0.0) -> tuple[float, float]:
    """Median milliseconds per image at batch 1 and images per second, after :data:`WARMUP` images."""
    times = []
    with torch.inference_mode(), min_score_inside(getattr(runner, "model", runner), min_score):
        for k, image in enumerate(images):
            start = time.perf_counter()
            runner([image])
            if k >= WARMUP:
                times.append(time.perf_counter() - start)
    if not times:
        return float("nan"), float("nan")
    return round(statistics.median(times) * 1000, 1), round(len(times) / sum(times), 2)


INT8 = "-int8"


def _exported(loaded: LoadedModel, name: str, folder: Path, score_threshold: float | None) -> tuple[Any, str, float]:
    """``(runner, status, size in MB)`` of the opened checkpoint exported as path ``name`` (a format, or a format
    and :data:`INT8`: quantised with ``--int8``'s defaults and gate) into ``folder``; SegtuneError when it fails."""
    fmt = name.removesuffix(INT8)
    out = folder / default_output(loaded.path, fmt).name
    if name != fmt:
        out = out.with_name(f"{out.stem}{INT8}{out.suffix}")
    result = export_loaded(loaded, fmt, out=out, score_threshold=score_threshold,
                           int8=Int8Request() if name != fmt else None)
    status = "parity passed" if result.parity.ok else "parity FAILED: " + "; ".join(result.parity.problems)
    if result.int8 is not None:
        status += f"; int8 {result.int8.summary()}"
    runner = open_model(out).model
    return runner, status, round(result.size_mb, 1)


def default_paths(int8: bool = False) -> tuple[str, ...]:
    """The eager model in float32 and in bf16, then every registered runtime that exports (plug-ins included),
    then (``int8``) those that quantise, quantised (``openvino-int8``: calibration and AP gate take minutes)."""
    formats = export_formats()
    quantised = [f"{name}{INT8}" for name in formats if export_runtime(name).int8_scopes] if int8 else []
    return ("eager", "eager-bf16", *formats, *quantised)


def benchmark_run(run: str | os.PathLike, *, images: int = 20, paths: tuple[str, ...] | None = None,
                  predict_threshold: float | None = 0.5) -> list[BenchmarkRow]:
    """Benchmark the run's best checkpoint on its test split (``images`` of them timed); writes benchmark.json.

    ``paths``: ``eager``, ``eager-bf16`` and export formats (default: :func:`default_paths`). The checkpoint
    is read once; each format exports a copy of its model. ``predict_threshold``: also time each path at
    prediction settings, keeping scores >= it (None: skip).
    """
    configure_threads(check_busy=True)  # timings beside other work are not comparable: say so
    loaded = open_model(run)
    model, classes = loaded.model, loaded.classes
    data_cfg, files = loaded.split_data("test")
    dataset = build_dataset(data_cfg, files=files, train=False)
    gt = dataset_ground_truth(dataset, classes)
    sample = [dataset[i][0] for i in range(min(len(dataset), images + WARMUP))]
    device = torch.device("cpu")
    weights = Path(loaded.path)
    rows: list[BenchmarkRow] = []
    for name in paths or default_paths():
        size = None
        if name == "eager":
            runner, status = model, "ok"
        elif name == "eager-bf16":
            if not cpu_has_native_bf16():
                rows.append(BenchmarkRow(name, "skipped: this CPU has no native bfloat16 (AVX-512 BF16 or AMX)"))
                continue
            runner, status = _Bf16(model), "ok"
        else:
            try:
                runner, status, size = _exported(loaded, name, weights.parent, None)
            except SegtuneError as e:
                rows.append(BenchmarkRow(name, f"failed: {e}"))
                continue
        logger.info("benchmark: %s", name)
        report = evaluate_model(runner, dataset, classes, device=device, gt=gt, mask_threshold=loaded.mask_threshold)
        row = BenchmarkRow(name, status, size, report.metrics.get("bbox", {}).get("AP"),
                           report.metrics.get("segm", {}).get("AP"), *_time(runner, sample))
        if predict_threshold is not None:
            if name in ("eager", "eager-bf16"):
                row.predict_ms_per_image, row.predict_images_per_s = _time(runner, sample, predict_threshold)
            else:  # the threshold is inside an exported file: export again, into a folder of its own
                with tempfile.TemporaryDirectory(prefix="segtune-benchmark-") as tmp:
                    try:
                        fast, _, _ = _exported(loaded, name, Path(tmp), predict_threshold)
                        row.predict_ms_per_image, row.predict_images_per_s = _time(fast, sample)
                    except SegtuneError as e:
                        row.status += f"; at score >= {predict_threshold}: failed: {e}"
        rows.append(row)
    folder = Path(run) if Path(run).is_dir() else Path(run).parent.parent
    write_json(folder / BENCHMARK_JSON, {"machine": f"{os.cpu_count()} CPUs ({cpu_name()}), torch "
                                         f"{torch.__version__}, {describe_threads()}",
                                         "test_images": len(dataset), "timed_images": max(0, len(sample) - WARMUP),
                                         "predict_threshold": predict_threshold,
                                         "rows": [dataclasses.asdict(r) for r in rows]})
    return rows


def markdown(rows: list[BenchmarkRow], predict_threshold: float | None = 0.5) -> str:
    """The rows as a Markdown table (with the prediction-settings columns when ``predict_threshold`` is set)."""
    def num(v: float | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)
    extra = predict_threshold is not None
    head = "| path | status | size (MB) | bbox AP | segm AP | ms / image | images / s |"
    if extra:
        head += f" ms / image, score >= {predict_threshold:g} | images / s, score >= {predict_threshold:g} |"
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for r in rows:
        line = (f"| {r.path} | {r.status} | {num(r.size_mb, '.1f')} | {num(r.bbox_ap, '.3f')} | "
                f"{num(r.segm_ap, '.3f')} | {num(r.ms_per_image, '.0f')} | {num(r.images_per_s, '.2f')} |")
        if extra:
            line += f" {num(r.predict_ms_per_image, '.0f')} | {num(r.predict_images_per_s, '.2f')} |"
        lines.append(line)
    return "\n".join(lines)
