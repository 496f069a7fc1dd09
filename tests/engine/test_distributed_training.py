"""Two training processes over Gloo on loopback, launched with torchrun as a user would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from segtune.cli.main import main
from segtune.evaluation import evaluate_checkpoint
from tests.conftest import TINY_MODEL, make_mask_folder

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
           *[f"{k}={v}" for k, v in TINY_MODEL.items()]]
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
    single = evaluate_checkpoint(run / "weights" / "last.pt", device="cpu")
    assert single.metrics == history[0]["metrics"]

    # The checkpoint rank 0 wrote resumes in a single process.
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [0, 1]
