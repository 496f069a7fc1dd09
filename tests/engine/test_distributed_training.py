"""Two training processes over Gloo on loopback, launched with torchrun as a user would."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from segtune.cli.main import main
from segtune.evaluation import evaluate_checkpoint
from tests.conftest import SMALL_MODEL, make_mask_folder

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes_train_evaluate_and_resume(tmp_path: Path) -> None:
    data = make_mask_folder(tmp_path / "data", n=6)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "segtune", "train", "--data", str(data), "--out", str(run),
           "--device", "cpu", "--epochs", "1", "--batch-size", "1", "--test-size", "2", "--print-freq", "1",
           "--tensorboard", "false", "--aspect-ratio-group-factor", "-1", "--lr", "0.001", "--clip-grad-norm", "1",
           # Contiguous weights, as evaluate_checkpoint's model has: channels-last convolutions round differently,
           # and this random-weight model's many near-threshold detections would move the AP in its last digits.
           "--memory-format", "contiguous",
           *[f"{k}={v}" for k, v in SMALL_MODEL.items()]]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    log = (run / "train.log").read_text()
    assert "distributed: 2 processes (gloo)" in log
    assert log.count("run folder:") == 1  # only rank 0 writes the log
    history = json.loads((run / "metrics.json").read_text())
    # 4 training images, batch 1 per process, 2 processes: 2 steps each, both ranks in step (DDP all-reduce).
    assert history[0]["train"]["iters"] == 2 and history[0]["step"] == 2

    # Evaluation was split across the ranks and gathered: the same AP as one process on the same weights.
    single = evaluate_checkpoint(run / "weights" / "last.pt", device="cpu", amp="none")
    assert single.metrics == history[0]["metrics"]

    # The checkpoint rank 0 wrote resumes in a single process.
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [0, 1]


def _wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen, timeout: float) -> None:
    """Poll ``ready`` until it holds; fail early if ``proc`` ends first, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"torchrun ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker ``launcher`` (torchrun) started as ``rank``: a child whose environment says RANK=rank."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
        if ppid == launcher and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    return None


def test_a_killed_rank_leaves_last_pt_at_the_last_step_and_one_line(tmp_path: Path) -> None:
    """kill -9 of rank 1 in the middle of an epoch: rank 0 writes last.pt at the last step both completed, says
    so in one line (no traceback), torchrun ends non-zero; the run resumes from that step in one process."""
    data = make_mask_folder(tmp_path / "data", n=6)
    run, logs = tmp_path / "run", tmp_path / "torchrun-logs"
    # --redirects 3: each rank's stdout and stderr go to files under --log-dir, apart from torchrun's own
    # report (which, for any rank that fails, is a Python traceback of torchrun's ChildFailedError).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "--log-dir", str(logs), "--redirects", "3",
           "-m", "segtune", "train", "--data", str(data), "--out", str(run), "--device", "cpu", "--epochs", "1",
           "--repeat", "100",  # 200 steps an epoch: far more than it takes to kill rank 1
           "--batch-size", "1", "--test-size", "2", "--print-freq", "1", "--tensorboard", "false",
           "--aspect-ratio-group-factor", "-1", "--lr", "0.001", "--clip-grad-norm", "1",
           "train.val_loss=false", "train.report=false", *[f"{k}={v}" for k, v in SMALL_MODEL.items()]]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    log = run / "train.log"

    def iterations_done() -> int:
        """Rank 0 logs every iteration, after its optimiser step; under DDP both ranks have then taken it."""
        text = log.read_text() if log.exists() else ""
        return max(map(int, re.findall(r"Epoch: \[0\]\s+\[\s*(\d+)/", text)), default=0)

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        _wait_for("second training step", lambda: iterations_done() >= 2, proc, timeout=300)
        rank1 = _rank_pid(proc.pid, 1)
        assert rank1 is not None, "rank 1's process not found among torchrun's children"
        os.kill(rank1, signal.SIGKILL)
        report = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:  # the test failed on the way: leave no worker behind
            for pid in filter(None, (_rank_pid(proc.pid, r) for r in (0, 1))):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, report[-3000:]

    (stderr0,) = [p for p in logs.rglob("stderr.log") if p.parent.name == "0"]
    said = stderr0.read_text()
    errors = [line for line in said.splitlines() if line.startswith("segtune: error:")]
    assert len(errors) == 1 and "Traceback" not in said, said[-3000:]
    assert errors[0].startswith("segtune: error: rank 0 of 2: lost another process in epoch 0 after iteration ")
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=True)
    step = ckpt["step"]
    assert step >= 2 and (ckpt["epoch"], ckpt["iteration"]) == (0, step)  # one batch a step, inside epoch 0
    assert errors[0].endswith(f"{run / 'weights' / 'last.pt'} holds the exact state after step {step}: "
                              f"resume with  segtune train --resume {run}")

    # One process goes on from that step: one more batch ends epoch 0 (fewer batches per epoch, given here).
    assert main(["train", "--resume", str(run), "--max-iters-per-epoch", str(step + 1)]) == 0
    (record,) = json.loads((run / "metrics.json").read_text())
    assert record["step"] == step + 1 and record["train"]["iters"] == 1
