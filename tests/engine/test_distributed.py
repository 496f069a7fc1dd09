"""The process group: two real processes over Gloo on loopback, started the way torchrun and srun do."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from segtune.engine import distributed as dist_mod
from segtune.engine.distributed import (DEFAULT_TIMEOUT_S, DistInfo, all_gather_objects, broadcast_object, first_host,
                                        get_rank, get_world_size, init_distributed, is_main_process,
                                        max_over_ranks, read_launch_env, reduce_mean, timeout_from_env, unwrap,
                                        wrap_ddp)
from segtune.errors import ConfigError

# Each rank joins a group the way torchrun starts it, checks the collectives, leaves; then joins again
# the way srun starts it (its variables in SLURM_ENV) and checks again. One launch keeps the test short.
WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    from segtune.engine.distributed import (all_gather_objects, barrier, broadcast_object, cleanup, get_rank,
                                            get_world_size, init_distributed, is_main_process, max_over_ranks,
                                            reduce_mean, unwrap, wrap_ddp)

    def check():
        info = init_distributed("cpu")
        rank = info.rank
        torch.manual_seed(0)  # the same initial weights on both ranks, as DDP expects
        model = wrap_ddp(torch.nn.Linear(3, 1), info)
        x = torch.full((4, 3), float(rank + 1))
        model(x).sum().backward()  # DDP averages the gradients: 4 rows x (1 + 2) / 2 per input feature
        out = {
            "info": [info.rank, info.local_rank, info.world_size, info.backend, str(info.device)],
            "rank": get_rank(), "world": get_world_size(), "main": is_main_process(),
            "gathered": all_gather_objects({"rank": rank, "dets": list(range(rank + 1))}),
            "mean": reduce_mean({"loss": float(rank), "loss_mask": 10.0 * (rank + 1)}),
            "max": max_over_ranks(5 * rank + 1),
            "broadcast": broadcast_object({"AP": 0.5} if rank == 0 else None),
            "grad": unwrap(model).weight.grad[0].tolist(),
            "unwrapped": type(unwrap(model)).__name__, "wrapped": type(model).__name__,
        }
        barrier()
        cleanup()
        return out

    results = {"torchrun": check()}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        del os.environ[key]
    os.environ.update(json.loads(os.environ["SLURM_ENV"]))
    results["slurm"] = check()
    with open(sys.argv[1] + f"/rank{results['torchrun']['rank']}.json", "w") as f:
        json.dump(results, f)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, env_for_rank) -> list[dict]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "MASTER_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    base.update({"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "CUDA_VISIBLE_DEVICES": ""})
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], env={**base, **env_for_rank(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=60)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_two_processes_over_gloo(launcher: str, two_ranks: list[dict]) -> None:
    for r, results in enumerate(two_ranks):
        out = results[launcher]
        assert out["info"] == [r, r, 2, "gloo", "cpu"]
        assert out["rank"] == r and out["world"] == 2 and out["main"] is (r == 0)
        assert out["gathered"] == [{"rank": 0, "dets": [0]}, {"rank": 1, "dets": [0, 1]}]
        assert out["mean"] == pytest.approx({"loss": 0.5, "loss_mask": 15.0})
        assert out["max"] == 6
        assert out["broadcast"] == {"AP": 0.5}
        assert out["grad"] == pytest.approx([6.0, 6.0, 6.0])
        assert out["wrapped"] == "DistributedDataParallel" and out["unwrapped"] == "Linear"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Both ranks' results; started once for the module (two Python processes cost seconds)."""
    ports = [str(_free_port()), str(_free_port())]

    def env(r: int) -> dict[str, str]:
        # srun's variables: no MASTER_ADDR, so rank 0's host comes from the node list; the port is
        # exported here because the one derived from SLURM_JOB_ID may be taken (checked below instead).
        slurm = {"SLURM_PROCID": str(r), "SLURM_LOCALID": str(r), "SLURM_NTASKS": "2",
                 "SLURM_STEP_NODELIST": "localhost", "SLURM_JOB_ID": "4242", "MASTER_PORT": ports[1]}
        return {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": ports[0], "SLURM_ENV": json.dumps(slurm)}

    return _launch(tmp_path_factory.mktemp("ddp"), env)


def test_launch_env_is_read_from_torchrun_or_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist_mod.shutil, "which", lambda name: None)  # no scontrol: our own parser
    assert read_launch_env({}) is None
    assert read_launch_env({"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: no group
    assert read_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_NODELIST": "n1"}) is None
    tr = read_launch_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "SLURM_PROCID": "0",
                          "SLURM_NTASKS": "2"})
    assert (tr.launcher, tr.rank, tr.local_rank, tr.world_size, tr.init_method) == ("torchrun", 5, 1, 8, "env://")
    sl = read_launch_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
                          "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.9"})
    assert (sl.launcher, sl.rank, sl.local_rank, sl.world_size) == ("slurm", 3, 1, 4)
    assert sl.init_method == f"tcp://gpu007:{29500 + 3456}"
    step = read_launch_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "2",
                            "SLURM_NODELIST": "n[1-4]"})
    assert step.world_size == 2 and step.init_method == "tcp://n1:29500"  # the srun step's tasks, not the job's
    own = read_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "MASTER_ADDR": "head", "MASTER_PORT": "1234",
                           "SLURM_NODELIST": "x1"})
    assert own.init_method == "tcp://head:1234"
    ip = read_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.9"})
    assert ip.init_method == "tcp://10.0.0.9:29500"
    with pytest.raises(ConfigError, match="export MASTER_ADDR"):
        read_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        read_launch_env({"RANK": "0", "WORLD_SIZE": "two"})


def test_first_host_of_a_slurm_node_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist_mod.shutil, "which", lambda name: None)
    assert first_host("gpu[003-005,009],cpu1") == "gpu003"
    assert first_host("a100-node[12,14]") == "a100-node12"
    assert first_host("login1,login2") == "login1"
    assert first_host("single") == "single"


def test_single_process_has_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(rank=0, local_rank=0, world_size=1, backend=None, device=torch.device("cpu"))
    assert not info.distributed and info.is_main
    assert not torch.distributed.is_initialized()
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    assert all_gather_objects({"a": 1}) == [{"a": 1}]
    assert reduce_mean({"loss": 2}) == {"loss": 2.0}
    assert max_over_ranks(3) == 3
    assert broadcast_object("x") == "x"
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, info) is model and unwrap(model) is model
    assert unwrap(torch.nn.DataParallel(model)) is model


def test_the_collective_timeout_is_segtune_dist_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """SEGTUNE_DIST_TIMEOUT (seconds) reaches init_process_group, the watchdog of a rank that stops answering."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    calls: list[dict] = []
    monkeypatch.setattr(dist_mod.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist_mod.dist, "init_process_group", lambda **kwargs: calls.append(kwargs))

    monkeypatch.setenv("SEGTUNE_DIST_TIMEOUT", "90.5")
    info = init_distributed("cpu")
    assert calls[-1]["timeout"] == datetime.timedelta(seconds=90.5) and calls[-1]["backend"] == "gloo"
    assert (info.world_size, info.timeout_s) == (2, 90.5)
    assert init_distributed("cpu", timeout_s=7).timeout_s == 7  # the Python API's own value wins
    assert calls[-1]["timeout"] == datetime.timedelta(seconds=7)

    monkeypatch.delenv("SEGTUNE_DIST_TIMEOUT")
    assert init_distributed("cpu").timeout_s == DEFAULT_TIMEOUT_S
    assert calls[-1]["timeout"] == datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    for bad in ("soon", "0", "-5", "nan", "inf"):
        with pytest.raises(ConfigError, match=f"SEGTUNE_DIST_TIMEOUT='{bad}' must be a positive number"):
            timeout_from_env({"SEGTUNE_DIST_TIMEOUT": bad})
    assert timeout_from_env({"SEGTUNE_DIST_TIMEOUT": " 600 "}) == 600.0
    assert timeout_from_env({"SEGTUNE_DIST_TIMEOUT": ""}) == DEFAULT_TIMEOUT_S
