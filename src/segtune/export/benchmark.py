"""Owns ``segtune benchmark RUN``: every way to run a trained model, side by side on its test split.

Rows: eager fp32, eager bf16 (CPU autocast; only where the CPU runs bfloat16 natively), TorchScript
and ONNX Runtime (each exported and checked by :func:`segtune.export.export_model` first). Columns:
status (ok, parity passed, or failed and why), file size, bbox and segm AP on the whole test split
from that path, and the median milliseconds per image at batch 1 (after two warm-up images) with
images per second. One Markdown table, also written as ``benchmark.json`` in the run folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segtune.checkpoint import checkpoint_data, load_checkpoint
from segtune.data import build_dataset
from segtune.errors import SegtuneError
from segtune.evaluation import dataset_ground_truth, evaluate_model
from segtune.export.exporter import default_output, export_model
from segtune.fileio import write_json
from segtune.models import model_from_checkpoint
from segtune.models.exported import InferenceOnly, load_exported
from segtune.runtime import cpu_has_native_bf16, cpu_name

logger = logging.getLogger(__name__)

BENCHMARK_JSON = "benchmark.json"
WARMUP = 2


@dataclass
class BenchmarkRow:
    path: str
    status: str
    size_mb: float | None = None
    bbox_ap: float | None = None
    segm_ap: float | None = None
    ms_per_image: float | None = None
    images_per_s: float | None = None


class _Bf16(InferenceOnly):
    """The eager model under CPU autocast to bfloat16, answering in float32 as the other paths do."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.model(images)
        return [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in out]


def _time(runner: Any, images: list[torch.Tensor]) -> tuple[float, float]:
    """Median milliseconds per image at batch 1 and images per second, after :data:`WARMUP` images."""
    times = []
    with torch.inference_mode():
        for k, image in enumerate(images):
            start = time.perf_counter()
            runner([image])
            if k >= WARMUP:
                times.append(time.perf_counter() - start)
    if not times:
        return float("nan"), float("nan")
    return statistics.median(times) * 1000, len(times) / sum(times)


def benchmark_run(run: str | os.PathLike, *, images: int = 20, paths: tuple[str, ...] = (
        "eager", "eager-bf16", "torchscript", "onnx")) -> list[BenchmarkRow]:
    """Benchmark the run's best checkpoint on its test split (``images`` of them timed); writes benchmark.json."""
    ckpt = load_checkpoint(run)
    model, cfg = model_from_checkpoint(ckpt)
    classes = list(ckpt["classes"])
    dataset = build_dataset(checkpoint_data(ckpt, None, "test"), files=ckpt.get("split", {}).get("test"), train=False)
    gt = dataset_ground_truth(dataset, classes)
    sample = [dataset[i][0] for i in range(min(len(dataset), images + WARMUP))]
    device = torch.device("cpu")
    rows: list[BenchmarkRow] = []
    for name in paths:
        size = None
        if name == "eager":
            runner, status = model, "ok"
        elif name == "eager-bf16":
            if not cpu_has_native_bf16():
                rows.append(BenchmarkRow(name, "skipped: this CPU has no native bfloat16 (AVX-512 BF16 or AMX)"))
                continue
            runner, status = _Bf16(model), "ok"
        else:
            out = default_output(Path(run), name)
            try:
                result = export_model(run, name, out=out)
            except SegtuneError as e:
                rows.append(BenchmarkRow(name, f"failed: {e}"))
                continue
            status = "parity passed" if result.parity.ok else "parity FAILED: " + "; ".join(result.parity.problems)
            size = round(result.size_mb, 1)
            runner, _ = load_exported(out)
        logger.info("benchmark: %s", name)
        report = evaluate_model(runner, dataset, classes, device=device, gt=gt, mask_threshold=cfg.eval.mask_threshold)
        ms, per_s = _time(runner, sample)
        rows.append(BenchmarkRow(name, status, size, report.metrics.get("bbox", {}).get("AP"),
                                 report.metrics.get("segm", {}).get("AP"), round(ms, 1), round(per_s, 2)))
    folder = Path(run) if Path(run).is_dir() else Path(run).parent.parent
    write_json(folder / BENCHMARK_JSON, {"machine": f"{os.cpu_count()} CPUs ({cpu_name()}), torch "
                                         f"{torch.__version__}, {torch.get_num_threads()} threads",
                                         "test_images": len(dataset), "timed_images": max(0, len(sample) - WARMUP),
                                         "rows": [dataclasses.asdict(r) for r in rows]})
    return rows


def markdown(rows: list[BenchmarkRow]) -> str:
    """The rows as a Markdown table."""
    def num(v: float | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)
    lines = ["| path | status | size (MB) | bbox AP | segm AP | ms / image | images / s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.path} | {r.status} | {num(r.size_mb, '.1f')} | {num(r.bbox_ap, '.3f')} | "
                     f"{num(r.segm_ap, '.3f')} | {num(r.ms_per_image, '.0f')} | {num(r.images_per_s, '.2f')} |")
    return "\n".join(lines)
