"""A broken process group: which errors mean a lost peer, the line each rank stops with, and what rank 0 saves.

The real thing (torchrun, two Gloo processes, one killed) is tests/engine/test_distributed_training.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segtune.cli.main import main
from segtune.config import build_config
from segtune.engine import faults, train
from segtune.engine.hooks import CallbackHook
from segtune.errors import DistributedError
from tests.conftest import make_mask_folder, short_run_settings
from tests.engine.test_distributed_training import SMALL_MODEL

# What Gloo raises (torch 2.14) when the peer died, and when it stopped answering for the timeout.
CLOSED = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
          "[127.0.0.1]:30081. This is typically caused by a remote worker crashing. Check the logs of the remote "
          "worker before reporting an error.")
TIMED_OUT = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
             "1800000ms for recv operation to complete")


def test_only_collective_errors_in_a_group_are_peer_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults.dist, "get_world_size", lambda: 2)
    assert faults.is_peer_failure(RuntimeError(CLOSED)) and not faults.is_timeout(RuntimeError(CLOSED))
    assert faults.is_peer_failure(RuntimeError(TIMED_OUT)) and faults.is_timeout(RuntimeError(TIMED_OUT))
    assert faults.is_peer_failure(torch.distributed.DistBackendError("NCCL communicator was aborted on rank 0"))
    assert not faults.is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
    assert not faults.is_peer_failure(ValueError(CLOSED))
    monkeypatch.setattr(faults.dist, "get_world_size", lambda: 1)
    assert not faults.is_peer_failure(RuntimeError(CLOSED))  # alone, there is no peer to lose


def test_the_line_each_rank_stops_with(tmp_path: Path) -> None:
    run = tmp_path / "run"
    last = run / "weights" / "last.pt"
    assert faults.reason(RuntimeError(CLOSED)) == "Connection closed by peer [127.0.0.1]:30081"
    rank0 = str(faults.peer_failure_error(RuntimeError(CLOSED), rank=0, world_size=2, where="in epoch 1 after "
                                          "iteration 7", timeout_s=1800, run_dir=run, checkpoint=last, step=19))
    assert rank0 == (f"rank 0 of 2: lost another process in epoch 1 after iteration 7 (Connection closed by peer "
                     f"[127.0.0.1]:30081): it died or was killed; its own output says why; {last} holds the exact "
                     f"state after step 19: resume with  segtune train --resume {run}")
    hung = str(faults.peer_failure_error(RuntimeError(TIMED_OUT), rank=0, world_size=2, where="in epoch 1 after "
                                         "iteration 7", timeout_s=1800, run_dir=run, checkpoint=last, step=19))
    assert hung.startswith("rank 0 of 2: no answer from another process for 1800 s in epoch 1 after iteration 7 "
                           "(Timed out waiting 1800000ms for recv operation to complete)")
    assert "SEGTUNE_DIST_TIMEOUT=SECONDS" in hung and hung.endswith(f"resume with  segtune train --resume {run}")
    rank1 = str(faults.peer_failure_error(RuntimeError(CLOSED), rank=1, world_size=2, where="in epoch 0 after "
                                          "iteration 3", timeout_s=1800, run_dir=run))
    assert "rank 0 writes the checkpoints" in rank1 and rank1.endswith(f"segtune train --resume {run}")
    early = str(faults.peer_failure_error(RuntimeError(CLOSED), rank=0, world_size=2, where="while the run was set up",
                                          timeout_s=1800))
    assert early.endswith("training had not started, so nothing was saved")


class PeerGone(RuntimeError):
    """Stands for what a collective raises when another rank died (a test cannot kill a peer in-process)."""


def test_a_peer_lost_during_evaluation_keeps_the_trained_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """Lost after the epoch's last step, while evaluating: last.pt holds every step of the epoch, and the resume
    trains nothing more of it, evaluates it and goes on."""
    monkeypatch.setattr(faults, "is_peer_failure", lambda exc: isinstance(exc, PeerGone))

    def lose_peer(trainer, epoch: int, record: dict) -> None:
        raise PeerGone(CLOSED)

    run = tmp_path / "run"
    cfg = build_config(("test", short_run_settings(make_mask_folder(tmp_path / "data", n=6), run, **SMALL_MODEL)))
    with pytest.raises(DistributedError) as caught:
        train(cfg, [CallbackHook({"evaluate": lose_peer}, main_process_only=False)])
    assert str(caught.value).endswith(f"in epoch 0 after iteration 2 (Connection closed by peer [127.0.0.1]:30081): "
                                      f"it died or was killed; its own output says why; {run / 'weights' / 'last.pt'} "
                                      f"holds the exact state after step 2: resume with  segtune train --resume {run}")
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["step"]) == (0, 2, 2)
    assert ckpt["scheduler"]["last_epoch"] == 2  # the schedule moved with every step taken

    assert main(["train", "--resume", str(run)]) == 0
    (record,) = json.loads((run / "metrics.json").read_text())
    assert (record["epoch"], record["step"], record["train"]["iters"]) == (0, 2, 0) and "bbox" in record["metrics"]
