"""Owns how many CPU threads torch uses: the cores this process may really use, shared among the ranks of a machine.

torch starts with one intra-op thread per core it sees, which ignores a container's CPU quota (Docker
``--cpus``, Kubernetes limits, SLURM cgroups) and the other ranks of a ``torchrun`` on the same machine;
threads beyond the cores the process gets are not idle but fight each other (measured on 2 cores: two
processes of two threads each made evaluation about 10x slower). :func:`configure_threads` sets
``torch.set_num_threads`` to ``floor(available CPUs / local ranks)`` (at least 1), where the available
CPUs are the affinity mask capped by the cgroup quota, and warns once when the machine is
over-subscribed (more threads than CPUs, or other work keeping half of them busy). ``SEGTUNE_THREADS``
sets the count outright; a set ``OMP_NUM_THREADS`` is the user's choice and is kept.

The cgroup files are read by hand: no kept library reads the CPU quota (``os.cpu_count`` and
``os.sched_getaffinity`` do not see it).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger("segtune")

_warned = False   # the over-subscription warning is given once a process
_sampled = False  # and the machine's load sampled once
_choice: "ThreadChoice | None" = None  # the last choice made


def describe_threads() -> str:
    """The threads torch uses and why, in words (the last :func:`configure_threads` choice)."""
    if _choice is not None and _choice.threads == torch.get_num_threads():
        return _choice.describe()
    return f"{torch.get_num_threads()} torch threads"


def cgroup_cpu_quota(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``1.5`` = 150 ms per 100 ms), or None without one."""
    own = ""
    try:  # cgroup v2: "0::/path/of/this/process"
        for line in (proc / "self" / "cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip().lstrip("/")
    except OSError:
        pass
    for folder in ([cgroup / own] if own else []) + [cgroup]:
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        return None if quota == "max" else int(quota) / int(period)
    for v1 in (cgroup / "cpu", cgroup / "cpu,cpuacct"):  # cgroup v1
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 else quota_us / period_us
    return None


def available_cpus(quota: float | None = None) -> float:
    """The CPUs this process may use: its affinity mask (``taskset``, SLURM), capped by the cgroup quota."""
    try:
        cpus: float = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota() if quota is None else quota
    return min(cpus, quota) if quota else cpus


def local_ranks(environ: Mapping[str, str] | None = None) -> int:
    """Processes of one training on this machine: ``LOCAL_WORLD_SIZE`` (torchrun), ``SLURM_NTASKS_PER_NODE``."""
    env = os.environ if environ is None else environ
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = env.get(key, "").split("(")[0]  # SLURM writes "2(x3)" for 2 tasks on each of 3 nodes
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cpus: float
    ranks: int
    reason: str

    def describe(self) -> str:
        return f"{self.threads} torch threads ({self.reason})"


def choose_threads(*, cpus: float, ranks: int = 1, environ: Mapping[str, str] | None = None) -> ThreadChoice:
    """The thread count for ``ranks`` processes sharing ``cpus``, unless the environment sets it."""
    env = os.environ if environ is None else environ
    for key in ("SEGTUNE_THREADS", "OMP_NUM_THREADS"):
        value = env.get(key, "")
        if value.isdigit() and int(value) > 0:
            return ThreadChoice(int(value), cpus, ranks, f"{key}={value}")
    threads = max(1, math.floor(cpus / ranks))
    cpu_text = f"{cpus:g} CPUs available"
    return ThreadChoice(threads, cpus, ranks, cpu_text if ranks == 1 else f"{cpu_text}, shared by {ranks} ranks")


def configure_threads(*, ranks: int | None = None, check_busy: bool = False,
                      environ: Mapping[str, str] | None = None) -> ThreadChoice:
    """Set torch's intra-op threads for this process; warn once when the machine is over-subscribed.

    ``check_busy``: also sample how busy the machine is (0.1 s, once per process; for work whose speed
    matters: training fitted to a time limit, benchmarks). Skipped with several local ranks, which start
    together and would count each other.
    """
    global _warned, _sampled, _choice
    env = os.environ if environ is None else environ
    ranks = local_ranks(env) if ranks is None else ranks
    choice = choose_threads(cpus=available_cpus(), ranks=ranks, environ=env)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    _choice = choice
    sample = check_busy and ranks == 1 and not _sampled
    _sampled = _sampled or sample
    problem = oversubscription(choice, sample_busy=sample)
    if problem and not _warned:
        _warned = True
        logger.warning("%s: every process runs slower than it would alone, and timings are not comparable", problem)
    return choice


def busy_cpus(sample_s: float = 0.1, stat: Path = Path("/proc/stat")) -> float | None:
    """CPUs kept busy by the whole machine over ``sample_s`` seconds (Linux ``/proc/stat``), or None.

    Sampled now rather than read from the load average, which lags by a minute: a segtune command that
    starts right after another has finished would read the finished one's load."""
    import time

    def read() -> tuple[int, int]:
        fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = read()
        time.sleep(sample_s)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def oversubscription(choice: ThreadChoice, busy: float | None = None, *, sample_busy: bool = False) -> str | None:
    """Why the machine is over-subscribed, or None: more threads than CPUs, or other work keeping at least
    half of them busy (measured only where this process may use every CPU: inside a container the
    machine's figures are other tenants')."""
    if choice.threads * choice.ranks > choice.cpus + 1e-9:
        return (f"{choice.ranks} process(es) x {choice.threads} threads on {choice.cpus:g} CPUs "
                f"({choice.reason})")
    if busy is None and sample_busy and choice.cpus >= (os.cpu_count() or 1):
        busy = busy_cpus()
    if busy is not None and busy >= max(0.75, choice.cpus / 2):
        return f"the machine is busy: other work keeps {busy:.1f} of its {choice.cpus:g} CPUs busy"
    return None
