"""Owns choosing the number format a model predicts fastest in on this machine: measured, never guessed.

``--amp auto`` (the default of ``segtune predict``, ``evaluate`` and :class:`~segtune.predict.Predictor`)
times the model in float32 and under bfloat16 autocast with channels-last weights on a few images of its
input size, and keeps the faster. Which wins depends on the CPU (native bfloat16 or not), the model
(a small one gains nothing from bf16) and the threads, so it is measured rather than read from CPU
flags: once per machine and model, remembered in the user's cache (``$SEGTUNE_CACHE_DIR/fastest.json``,
else ``~/.cache/segtune``), so later runs only read it. ``--amp none`` or ``bf16`` forces one.
"""

from __future__ import annotations

import datetime
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segtune.fileio import cache_dir, write_json
from segtune.machine import cpu_name

logger = logging.getLogger("segtune")

#: The autocast dtype of each number format that may be chosen, as ``--amp`` names them.
DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The clock the runs are timed with (tests put a fake one here).
now: Callable[[], float] = time.perf_counter
#: Where the choices are remembered, in the user's cache (keyed by :func:`machine_key` and :func:`model_key`).
CACHE_FILE = "fastest.json"


def cache_file() -> Path:
    return cache_dir() / CACHE_FILE


def machine_key(device: torch.device) -> str:
    """What the choice depends on besides the model: the processor, torch's version and its threads."""
    chip = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return f"{device.type}|{chip}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def model_key(model: nn.Module) -> str:
    """The model's architecture and size: its class, parameter count and input size (not its weights)."""
    transform = getattr(model, "transform", None)
    size = (getattr(transform, "min_size", None), getattr(transform, "max_size", None))
    return f"{type(model).__name__}|{sum(p.numel() for p in model.parameters())} parameters|input {size}"


def sample_images(model: nn.Module, device: torch.device, count: int = 1) -> list[torch.Tensor]:
    """``count`` images of the model's input size (its shorter side; 4:3), with fixed noise in them."""
    transform = getattr(model, "transform", None)
    side = getattr(transform, "min_size", (512,))
    side = int(side[-1] if isinstance(side, (tuple, list)) else side)
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, side, side * 4 // 3, generator=generator).to(device) for _ in range(count)]


def time_runs(runners: Mapping[str, Callable[[], Any]], *, repeats: int = 2,
              clock: Callable[[], float] | None = None) -> dict[str, float]:
    """Median seconds of each runner over ``repeats`` calls, after one untimed call (warm-up); the runners take
    turns, so a machine that slows down during the measurement slows each of them alike."""
    clock = clock or now
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = clock()
            run()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def fastest_amp(model: nn.Module, device: torch.device, *, prepare: Callable[[], Callable[[], None]],
                low: str = "bf16", clock: Callable[[], float] | None = None) -> tuple[str, str]:
    """The faster of float32 and autocast to ``low`` (bf16; fp16 on a GPU without bfloat16) for ``model`` on
    ``device``, and why (for the log).

    ``prepare()`` readies the model for autocast in place (channels-last weights, the family's hooks) and
    returns the function that undoes it. Read from the cache when this machine and model were measured before.
    """
    key = f"{machine_key(device)}|{model_key(model)}"
    path = cache_file()
    known = _read(path).get(key)
    if isinstance(known, dict) and known.get("amp") in ("none", low):
        return known["amp"], _why(known, f"measured {known.get('date', '?')}, remembered in {path}")
    images = sample_images(model, device)

    def run(dtype: torch.dtype | None) -> Callable[[], None]:
        def forward() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                model(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return forward

    logger.info("number formats: measuring float32 against %s for this model on this machine, once "
                "(--amp none or bf16 skips it)", low)
    was_training = model.training
    model.eval()
    fp32 = time_runs({"none": run(None)}, clock=clock)
    undo = prepare()
    try:
        measured = {**fp32, **time_runs({low: run(DTYPES[low])}, clock=clock)}
    finally:
        undo()
        model.train(was_training)
    amp = min(measured, key=measured.__getitem__)
    record = {"amp": amp, "ms": {name: round(s * 1000, 2) for name, s in measured.items()},
              "date": datetime.date.today().isoformat()}
    try:
        write_json(path, {**_read(path), key: record})
    except OSError as e:  # a read-only cache: measure again next time
        logger.debug("cannot remember the number format in %s: %s", path, e)
    return amp, _why(record, "measured now")


def _why(record: Mapping[str, Any], when: str) -> str:
    ms = record.get("ms", {})
    timed = ", ".join(f"{'float32' if name == 'none' else name} {value} ms" for name, value in ms.items())
    return f"--amp auto: the faster here ({when}: {timed} per image)"
