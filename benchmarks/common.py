"""What every benchmark script shares: the machine line, the data path default, JSON results."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"
DATA = os.environ.get("SEGTUNE_DATA", str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "PennFudanPed"))


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set section.key=value`` items as config overrides, each value read as YAML (as segtune reads
    its own ``key=value`` overrides); exits with a message on an item without ``=``."""
    import sys

    import yaml

    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--set {item!r}: expected section.key=value")
        values[key] = yaml.safe_load(value)
    return values


def machine(threads: int | None = None) -> str:
    """One line naming the CPU (or GPU), the threads torch uses (``threads``: those of another process
    that did the work, such as the peer's) and the torch / torchvision versions."""
    import torchvision

    from segtune.machine import cpu_name

    cpu = cpu_name()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    threads = torch.get_num_threads() if threads is None else threads
    return (f"{cpu}, {os.cpu_count()} cores, {threads} torch threads{gpu}, "
            f"torch {torch.__version__}, torchvision {torchvision.__version__}")


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``result`` (with the machine line) to ``benchmarks/results/NAME``; return the path."""
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"machine": machine(), **result}, indent=2))
    tmp.replace(path)
    return path


def append_record(name: str, record: dict[str, Any]) -> Path:
    """Append one JSON line to ``benchmarks/results/NAME`` (a log of tries that is never rewritten)."""
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"machine": machine(), **record}) + "\n")
    return path
