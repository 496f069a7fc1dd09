"""Owns the process group: rank, world size, device per process, and the few collectives training needs.

Two launchers are understood, and a run with neither is a single process with no process group:

* ``torchrun`` (``python -m torch.distributed.run``), on one node or many (``--nnodes`` and a
  rendezvous): it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
  for every process, and the group is joined through ``env://``.
* SLURM's ``srun`` with one task per GPU: ``SLURM_PROCID`` is the rank, ``SLURM_STEP_NUM_TASKS``
  (the step's tasks, set by ``srun``; else ``SLURM_NTASKS``) the world size and ``SLURM_LOCALID``
  the local rank. Start segtune with ``srun`` inside an ``sbatch`` script: run bare in a script
  that asked for several tasks, rank 0 would wait for tasks that never start. The rendezvous address is, in this order:
  ``MASTER_ADDR`` if you exported it; the first host of the step's node list
  (``SLURM_STEP_NODELIST``, else ``SLURM_JOB_NODELIST``/``SLURM_NODELIST``), expanded with
  ``scontrol show hostnames`` when ``scontrol`` is on the PATH and by a small parser of the
  ``node[01-04],other`` form otherwise -- rank 0 runs on that host; then ``SLURM_LAUNCH_NODE_IPADDR``.
  The port is ``MASTER_PORT`` if exported, else ``29500 + SLURM_JOB_ID % 10000`` so that two jobs
  sharing a node do not collide.

GPUs use NCCL and one device per process (``cuda:LOCAL_RANK``); CPUs use Gloo. If both sets of
variables are present (``torchrun`` inside a SLURM allocation), ``torchrun``'s win.

A collective waits at most ``SEGTUNE_DIST_TIMEOUT`` seconds (default :data:`DEFAULT_TIMEOUT_S`) for the
other ranks; past that it raises, and training stops as it does when a rank dies (:mod:`segtune.engine.faults`).
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from segtune.errors import ConfigError
from segtune.machine import resolve_device

logger = logging.getLogger("segtune.train")

DEFAULT_PORT = 29500
# COCO scoring of a large validation set runs on rank 0 while the other ranks wait in the next
# collective; NCCL's default 10-minute timeout would kill the job there.
DEFAULT_TIMEOUT_S = 3600.0
#: Seconds a collective may wait for the other ranks (a float), when set; else :data:`DEFAULT_TIMEOUT_S`.
TIMEOUT_ENV = "SEGTUNE_DIST_TIMEOUT"


@dataclass
class DistInfo:
    """Where this process stands: its ranks, the world size, the backend (None = no group), its device and
    how long a collective may wait for the other ranks."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class LaunchEnv:
    """What a launcher told this process; ``init_method`` is ``env://`` or ``tcp://host:port``."""

    launcher: str
    rank: int
    local_rank: int
    world_size: int
    init_method: str


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise ConfigError(f"environment variable {key}={environ[key]!r} is not an integer") from None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``gpu[003-005,009],cpu1`` (here ``gpu003``).

    Uses ``scontrol show hostnames`` when it is available, as SLURM's own expansion; otherwise the
    first entry is expanded here (a prefix and the first number of its bracket, keeping zero padding).
    """
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 check=True, timeout=30).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass  # fall back to parsing it ourselves
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ConfigError(f"SLURM node list {nodelist!r} cannot be read; export MASTER_ADDR")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + re.split(r"[-,]", ranges, maxsplit=1)[0]


def read_launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """What ``torchrun`` or ``srun`` set for this process, or None when it runs alone.

    A launcher with a world size of 1 (``srun -n 1``, ``torchrun --nproc_per_node=1``) also counts as
    alone: no process group is made for one process.

    Raises:
        ConfigError: a variable is not a number, or SLURM gave no way to find rank 0's host.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE")
        if world <= 1:
            return None
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        return LaunchEnv("torchrun", _int(env, "RANK"), local, world, "env://")
    if "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env):
        world = _int(env, "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS")
        if world <= 1:
            return None
        addr = env.get("MASTER_ADDR")
        if not addr:
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            if nodelist:
                addr = first_host(nodelist)
            else:
                addr = env.get("SLURM_LAUNCH_NODE_IPADDR")
        if not addr:
            raise ConfigError("SLURM gave no node list and no SLURM_LAUNCH_NODE_IPADDR; export MASTER_ADDR "
                              "(the host of rank 0) and MASTER_PORT")
        if "MASTER_PORT" in env:
            port = _int(env, "MASTER_PORT")
        else:
            port = DEFAULT_PORT + (_int(env, "SLURM_JOB_ID") % 10000 if "SLURM_JOB_ID" in env else 0)
        local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        return LaunchEnv("slurm", _int(env, "SLURM_PROCID"), local, world, f"tcp://{addr}:{port}")
    return None


def timeout_from_env(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a collective may wait: ``SEGTUNE_DIST_TIMEOUT`` when set, else :data:`DEFAULT_TIMEOUT_S`.

    Raises:
        ConfigError: the variable is not a positive number.
    """
    env = os.environ if environ is None else environ
    text = env.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"environment variable {TIMEOUT_ENV}={text!r} must be a positive number of seconds")
    return seconds


def _process_device(device_pref: str, local_rank: int) -> torch.device:
    """``cpu`` stays CPU; ``auto`` and ``cuda`` become ``cuda:LOCAL_RANK`` (one GPU per process)."""
    if device_pref == "cpu":
        return torch.device("cpu")
    if device_pref == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    requested = resolve_device(device_pref)
    if requested.type != "cuda":
        return requested
    if requested.index is not None:
        raise ConfigError(f"--device {device_pref}: with several processes each one uses cuda:LOCAL_RANK; "
                          f"pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"local rank {local_rank} has no GPU: only {torch.cuda.device_count()} visible on this "
                          f"node; start at most that many processes per node")
    return torch.device("cuda", local_rank)


def init_distributed(device_pref: str = "auto", *, timeout_s: float | None = None) -> DistInfo:
    """Join the process group the launcher describes, or describe a single process.

    Args:
        device_pref: ``--device``: ``auto``, ``cpu``, ``cuda`` (``cuda:N`` only when single-process).
        timeout_s: how long a collective may wait for the slowest rank before it raises (the watchdog
            for a rank that hangs); None: :func:`timeout_from_env`.

    Returns:
        The :class:`DistInfo` of this process. Under a launcher, the process group is initialised
        (NCCL on CUDA, Gloo on CPU) and, on CUDA, the current device is ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: bad launcher variables, a device this process cannot use, a bad ``SEGTUNE_DIST_TIMEOUT``.
    """
    launch = read_launch_env()
    if launch is None:
        return DistInfo(device=resolve_device(device_pref))
    if timeout_s is None:
        timeout_s = timeout_from_env()
    device = _process_device(device_pref, launch.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        logger.info("joining a group of %d processes (%s, %s) as rank %d; collectives wait at most %g s (%s)",
                    launch.world_size, launch.launcher, launch.init_method, launch.rank, timeout_s, TIMEOUT_ENV)
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = device  # binds NCCL to this GPU now, so barrier() knows which one to use
        dist.init_process_group(backend=backend, init_method=launch.init_method, rank=launch.rank,
                                world_size=launch.world_size, timeout=datetime.timedelta(seconds=timeout_s),
                                **kwargs)
    info = DistInfo(rank=launch.rank, local_rank=launch.local_rank, world_size=launch.world_size, backend=backend,
                    device=device, timeout_s=timeout_s)
    logger.info("distributed (%s): rank %d of %d, local rank %d, %s, %s", launch.launcher, info.rank,
                info.world_size, info.local_rank, backend, device)
    return info


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, the process that writes logs, checkpoints and pictures (and when alone)."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank; nothing to do when alone."""
    if get_world_size() > 1:
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` when alone."""
    world = get_world_size()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. the COCO metrics scored on rank 0); ``obj`` when alone."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def max_over_ranks(value: int) -> int:
    """The largest ``value`` over the ranks, on every rank (e.g. "has any rank been asked to stop");
    ``value`` when alone."""
    if get_world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers of ``model`` (BatchNorm's running statistics), in place; nothing
    when alone. Without SyncBN each rank's statistics follow its own batches, and DDP sends rank 0's only
    at the next training forward: evaluated as they are, each rank would score a slightly different model
    from the one rank 0 saves."""
    if get_world_size() == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=src)


def reduce_mean(values: Mapping[str, float]) -> dict[str, float]:
    """The mean over ranks of each value (e.g. loss terms for the log), as plain floats.

    Every rank must pass the same keys (the model's loss terms are); values are summed in sorted-key
    order with one ``all_reduce``.
    """
    if get_world_size() == 1:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= get_world_size()
    return dict(zip(keys, tensor.tolist()))


def cleanup() -> None:
    """Leave the process group (call once at the end, on every rank); nothing to do when alone."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside ``DistributedDataParallel``/``DataParallel`` (and ``torch.compile``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def wrap_ddp(model: nn.Module, info: DistInfo, *, sync_bn: bool = False) -> nn.Module:
    """``model`` (already on ``info.device``) in ``DistributedDataParallel``; unchanged when single-process.

    Args:
        model: the model, on this process's device.
        info: from :func:`init_distributed`.
        sync_bn: convert trainable ``BatchNorm`` layers to ``SyncBatchNorm`` first (CUDA only:
            PyTorch's SyncBatchNorm has no CPU kernel, so on CPU this is skipped with a warning).
            torchvision's detection backbones use ``FrozenBatchNorm2d``, which this leaves alone.
    """
    if not info.distributed:
        if sync_bn:
            logger.info("sync_bn: one process, so there is nothing to synchronise; BatchNorm layers stay as they are")
        return model
    if sync_bn:
        if info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            logger.warning("sync_bn: SyncBatchNorm needs CUDA; BatchNorm layers stay per-process on CPU")
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
