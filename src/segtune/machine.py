"""Owns the process-level choices: device, seeds, worker counts, memory readings, progress display."""

from __future__ import annotations

import logging
import os
import platform
import random
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from segtune.errors import ConfigError

logger = logging.getLogger("segtune")
T = TypeVar("T")


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an explicit device must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"--device '{spec}' is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def default_workers(device: torch.device, requested: int | None) -> int:
    if requested is not None:
        return max(0, requested)
    # On CPU the model needs every core and decoding a PNG is cheap next to a training step.
    return 4 if device.type == "cuda" else 0


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU).

    Args:
        seed: the seed.
        deterministic: also make torch choose deterministic kernels: ``use_deterministic_algorithms``
            (``warn_only``, because some detection ops, e.g. the backward of ``roi_align`` on CUDA, have
            no deterministic form and should warn rather than stop training), cuDNN without
            benchmarking, and the cuBLAS workspace setting CUDA needs for reproducible matrix
            products. Same results run to run on one device; slower.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too
    if deterministic:
        # Read by cuBLAS when its handle is created, so set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoader workers: seed ``random`` and NumPy from the worker's torch seed.

    The loader gives each worker the torch seed ``base_seed + worker_id``, where ``base_seed`` comes
    from the loader's ``generator``; deriving the others from it makes augmentations that draw from
    ``random`` or NumPy differ between workers yet repeat between runs with the same seed.
    """
    del worker_id  # already part of torch.initial_seed() here
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


worker_init_fn = seed_worker


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16 or AMX); False when torch cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what the platform module says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def is_terminal() -> bool:
    return sys.stderr.isatty()


def track(items: Iterable[T], *, total: int, desc: str, every: int = 10) -> Iterator[T]:
    """Iterate with a progress bar on a terminal, or a log line every ``every`` items otherwise."""
    if is_terminal():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    start = time.perf_counter()
    for i, item in enumerate(items, 1):
        yield item
        if i % every == 0 or i == total:
            elapsed = time.perf_counter() - start
            eta = elapsed / i * (total - i)
            logger.info("%s: %d/%d  %.2f s/it  eta %s", desc, i, total, elapsed / i, format_seconds(eta))


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"
