"""What every benchmark script shares: the machine line, the data path default, JSON results stamped
with machine, date and command."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
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


def command() -> str:
    """The script and its arguments as run (``benchmarks/inference.py --models tutorial``), the script
    named from the repository root where it lies inside it."""
    script = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    try:
        script = Path(script).resolve().relative_to(ROOT).as_posix()
    except (ValueError, OSError):
        pass
    return shlex.join([script, *sys.argv[1:]])


def stamp(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with ``machine``, ``date`` and ``command`` first, so that no script can forget them.

    ``machine`` and ``command`` are always this process's. A ``machine`` the caller gave that differs
    (the line of another process that did the work, such as the peer's) is kept as ``work_machine``.
    ``date`` is the caller's where given (the day or time the work was done), else today (ISO)."""
    here = machine()
    stamped = {"machine": here, "date": datetime.date.today().isoformat(), "command": command()}
    rest = {k: v for k, v in result.items() if k not in ("machine", "command")}
    given = result.get("machine")
    if given is not None and given != here:
        rest.setdefault("work_machine", given)
    return {**stamped, **rest}


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``result``, stamped (:func:`stamp`), to ``benchmarks/results/NAME`` (a ``.json`` name); return
    the path."""
    if not name.endswith(".json"):
        raise ValueError(f"write_result({name!r}): a results file name ends in .json")
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(stamp(result), indent=2))
    tmp.replace(path)
    return path


def append_record(name: str, record: dict[str, Any]) -> Path:
    """Append one JSON line, stamped (:func:`stamp`), to ``benchmarks/results/NAME`` (a log of tries that
    is never rewritten)."""
    if not name.endswith(".jsonl"):
        raise ValueError(f"append_record({name!r}): a log's name ends in .jsonl")
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(stamp(record)) + "\n")
    return path
